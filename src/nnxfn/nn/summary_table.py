"""Cells and table rendering for `tabulate`: rich when installed, plain text otherwise.

A cell is a list of lines; a line is a list of `(text, style)` segments
(`style` is a rich style name such as "dim" or "bold", or None). Values are
written in a short YAML-like layout: `- item` for sequences, `key: value`
for mappings, `float32[2,3]` for arrays.

>>> print(text(value_lines({"x": [1, (2, 3)], "y": {}})))
x:
- 1
- - 2
  - 3
y: {}
>>> print(render_plain("T", ["a", "b"], [[[[("x", None)]], [[("1", "bold")]]]], ["", "2"], "sum"))
    T
+---+---+
| a | b |
+===+===+
| x | 1 |
+---+---+
|   | 2 |
+---+---+
   sum
"""

from __future__ import annotations

import io
import typing as tp

import jax
import numpy as np

from nnxfn.facade.variables import Variable
from nnxfn.nn.types import Dtype

Segment = tuple[str, "str | None"]
Line = list[Segment]
Cell = list[Line]
Container = tp.Union[list[object], tuple[object, ...], dict[tp.Hashable, object]]


class Shaped(tp.Protocol):
    """What `array_segments` reads: an array, a `jax.ShapeDtypeStruct`, ..."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> Dtype: ...


# -- values -> lines ---------------------------------------------------------------------
def array_segments(x: Shaped) -> Line:
    """`float32[2,3]` with the dtype dimmed (as flax shows it)."""
    name = getattr(x.dtype, "name", None)
    dtype = np.dtype(x.dtype).name if name is None else str(name)
    if "key<" in str(x.dtype):
        dtype = str(x.dtype)
    return [(dtype, "dim"), (f"[{','.join(str(d) for d in x.shape)}]", None)]


def _is_array_like(x: object) -> tp.TypeGuard[jax.Array | np.ndarray | jax.ShapeDtypeStruct | np.generic]:
    return isinstance(x, (jax.Array, np.ndarray, jax.ShapeDtypeStruct, np.generic))


def _scalar(x: object, node_types: tuple[type, ...]) -> Line:
    if isinstance(x, Variable):
        x = x.raw_value
    if _is_array_like(x) or (hasattr(x, "shape") and hasattr(x, "dtype") and hasattr(x, "aval")):
        return array_segments(x)
    if isinstance(x, node_types):
        return [(f"{type(x).__name__}(...)", None)]
    if isinstance(x, type):
        return [(f"type[{x.__name__}]", None)]
    if isinstance(x, str):
        return [(x, None)]
    return [(repr(x), None)]


def _as_container(x: object) -> Container | None:
    """Lists/tuples/dicts as they are; other pytrees with leaves as {path: leaf}."""
    if isinstance(x, (list, tuple, dict)):
        if isinstance(x, tuple) and hasattr(x, "_fields"):  # NamedTuple
            return dict(zip(x._fields, x))
        return x
    if _is_array_like(x) or x is None:
        return None
    try:
        pairs = jax.tree_util.tree_flatten_with_path(x)[0]
    except Exception:  # noqa: BLE001 - unflattenable objects are shown by repr
        return None
    if len(pairs) == 1 and pairs[0][0] == ():
        return None
    if not pairs:
        return None
    return {jax.tree_util.keystr(p).lstrip("."): v for p, v in pairs}


def value_lines(x: object, node_types: tuple[type, ...] = ()) -> Cell:
    """Lines for one value; empty containers show as `[]`/`{}`, None as `None`."""
    container = None if isinstance(x, node_types) else _as_container(x)
    if container is None:
        return [_scalar(x, node_types)]
    if isinstance(container, dict):
        if not container:
            return [[("{}", None)]]
        lines: Cell = []
        for k, v in container.items():
            inner = None if isinstance(v, node_types) else _as_container(v)
            sub = value_lines(v, node_types)
            if inner is not None and len(inner):
                indent = "" if isinstance(inner, (list, tuple)) else "  "
                lines.append([(f"{k}:", None)])
                lines += [[(indent, None), *line] for line in sub]
            else:
                lines.append([(f"{k}: ", None), *sub[0]])
        return lines
    if not container:
        return [[("[]", None)]]
    lines = []
    for v in container:
        sub = value_lines(v, node_types)
        lines.append([("- ", None), *sub[0]])
        lines += [[("  ", None), *line] for line in sub[1:]]
    return lines


def top_lines(x: object, node_types: tuple[type, ...] = ()) -> Cell:
    """Like `value_lines`, but nothing at all for None or an empty container."""
    if x is None or (isinstance(x, (list, tuple, dict)) and not x):
        return []
    return value_lines(x, node_types)


def inputs_cell(args: tuple, kwargs: dict, node_types: tuple[type, ...] = ()) -> Cell:
    """One argument alone as itself; several as a `- ` list; keywords as `key: value`."""
    lines: Cell = []
    if args:
        lines += top_lines(args[0] if len(args) == 1 and not kwargs else list(args), node_types)
    if kwargs:
        lines += top_lines(dict(kwargs), node_types)
    return lines


def text(cell: Cell) -> str:
    """The cell's plain text (segments joined, lines joined by newlines)."""
    return "\n".join("".join(t for t, _ in line) for line in cell)


# -- sizes -----------------------------------------------------------------------------------
def bytes_str(n: int) -> str:
    """Byte counts the way flax prints them: `24 B`, `1.1 KB`, `23.2 MB`."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n > scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:,} B"


def count_segments(size: int, nbytes: int, bold: bool = False) -> Line:
    style = "bold" if bold else None
    return [(f"{size:,} ", style), (f"({bytes_str(nbytes)})", "dim")]


# -- rendering ---------------------------------------------------------------------------------
def render_rich(
    title: str,
    header: list[str],
    rows: list[list[Cell]],
    footer: list[str],
    caption: str,
    total_column: int,
    table_kwargs: tp.Mapping[str, tp.Any],
    column_kwargs: tp.Mapping[str, tp.Any],
    console_kwargs: tp.Mapping[str, tp.Any],
) -> str:
    """The table through `rich.table.Table`, printed by a `rich.console.Console`."""
    import rich.console
    import rich.table
    import rich.text

    def to_text(cell: Cell) -> rich.text.Text:
        out = rich.text.Text()
        for i, line in enumerate(cell):
            if i:
                out.append("\n")
            for t, style in line:
                out.append(t, style=style)
        return out

    # rich's own keyword types are checked by rich
    options: dict[str, tp.Any] = {
        "show_header": True,
        "show_lines": True,
        "show_footer": True,
        "title": title,
    }
    options.update(table_kwargs)
    table = rich.table.Table(**options)
    for name in header:
        table.add_column(name, **column_kwargs)
    for row in rows:
        table.add_row(*(to_text(c) for c in row))
    for column, value in zip(table.columns, footer):
        column.footer = value
    table.columns[total_column].footer = rich.text.Text("Total", justify="right")
    table.caption_style = "bold"
    table.caption = f"\n{caption}"
    try:
        from IPython import get_ipython

        in_ipython = get_ipython() is not None
    except ImportError:
        in_ipython = False
    console: dict[str, tp.Any] = {"force_terminal": True, "force_jupyter": in_ipython, **console_kwargs}
    buffer = io.StringIO()
    rich.console.Console(file=buffer, **console).print(table)
    return buffer.getvalue()


def render_plain(
    title: str, header: list[str], rows: list[list[Cell]], footer: list[str], caption: str
) -> str:
    """The same table in ASCII, for installs without rich."""
    cells = [[text(c).split("\n") if c else [] for c in row] for row in rows]
    cells.append([[f] if f else [] for f in footer])
    widths = [len(h) for h in header]
    for row in cells:
        for j, lines in enumerate(row):
            widths[j] = max([widths[j], *(len(s) for s in lines)])
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(parts: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(parts, widths)) + " |"

    out = [title.center(len(rule)).rstrip(), rule, line(header), rule.replace("-", "=")]
    for row in cells:
        for k in range(max(1, *(len(c) for c in row))):
            out.append(line([c[k] if k < len(c) else "" for c in row]))
        out.append(rule)
    out.append(caption.center(len(rule)).rstrip())
    return "\n".join(out)
