"""`tabulate`: a plain-text table of a module's calls, shapes and Variables.

The module is cloned and run once on the given inputs with every sub-module's
`__call__` intercepted, so the table lists each module call (root first, in
call order) with its input/output shapes and, per Variable type, how many
numbers and bytes its sub-tree holds. The original module is never touched.

>>> from nnxfn.facade.rngs import Rngs
>>> from nnxfn.nn.linear import Linear
>>> table = tabulate(Linear(3, 4, rngs=Rngs(0)), jnp.ones((2, 3)))
>>> "Total Parameters: 16 (64 B)" in table
True
"""

from __future__ import annotations

import dataclasses
import typing as tp

import jax
import jax.numpy as jnp
import numpy as np

from nnxfn import core
from nnxfn.core.graph import is_array
from nnxfn.facade.module import Module, iter_modules
from nnxfn.facade.variables import RngState, Variable


@dataclasses.dataclass
class CallInfo:
    """One recorded module call (a table row)."""

    path: tuple
    type: type
    inputs: tuple[tuple, dict]
    outputs: tp.Any
    flops: float | None = None
    vjp_flops: float | None = None


# -- formatting ---------------------------------------------------------------------------
def _array_str(x: tp.Any) -> str:
    dtype = getattr(x.dtype, "name", str(x.dtype))
    return f"{dtype}[{','.join(str(d) for d in x.shape)}]"


def _value_lines(value: tp.Any) -> list[str]:
    """Shapes of a call's arguments or outputs, one line per top-level item."""
    if value is None:
        return []
    if is_array(value) or isinstance(value, Variable):
        return [_array_str(value)]
    if isinstance(value, (list, tuple)):
        inner = ", ".join(" ".join(_value_lines(v)) or repr(v) for v in value)
        return [f"({inner})" if isinstance(value, tuple) else f"[{inner}]"]
    if isinstance(value, dict):
        return [f"{k}: {' '.join(_value_lines(v)) or repr(v)}" for k, v in value.items()]
    leaves = jax.tree.leaves(value)
    if leaves and all(is_array(x) for x in leaves):
        return [jax.tree.map(_array_str, value).__repr__()]
    text = repr(value)
    return [text if len(text) <= 40 else text[:37] + "..."]


def _input_lines(args: tuple, kwargs: dict) -> list[str]:
    lines = [s for a in args for s in (_value_lines(a) or [repr(a)])]
    return lines + [f"{k}: {' '.join(_value_lines(v)) or repr(v)}" for k, v in kwargs.items()]


def _size_bytes(x: tp.Any) -> tuple[int, int]:
    x = x.raw_value if isinstance(x, Variable) else x
    if not is_array(x):
        return 0, 0
    size = int(np.prod(x.shape, dtype=np.int64))
    nbytes = getattr(x, "nbytes", None)
    return size, int(nbytes if nbytes is not None else size * np.dtype(x.dtype).itemsize)


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def _count_str(size: int, nbytes: int) -> str:
    return f"{size:,} ({_human_bytes(nbytes)})"


def _group(var_type: type) -> str:
    """Column for a Variable type: its own name (RngKey/RngCount -> RngState)."""
    return RngState.__name__ if issubclass(var_type, RngState) else var_type.__name__


@dataclasses.dataclass
class _Stats:
    totals: dict[str, tuple[int, int]]  # column -> (count, bytes) over the sub-tree
    direct: dict[str, list[str]]  # column -> "name: float32[3,4]" for own Variables


def _stats(module: Module) -> _Stats:
    totals: dict[str, tuple[int, int]] = {}
    direct: dict[str, list[str]] = {}
    _, pairs = core.flatten(module, copy=False)
    for path, leaf in pairs:
        if not isinstance(leaf, Variable):
            continue
        col = _group(type(leaf))
        size, nbytes = _size_bytes(leaf)
        c, b = totals.get(col, (0, 0))
        totals[col] = (c + size, b + nbytes)
        if len(path) == 1 and is_array(leaf.raw_value):
            direct.setdefault(col, []).append(f"{path[0]}: {_array_str(leaf.raw_value)}")
    return _Stats(totals, direct)


# -- intercepting calls ---------------------------------------------------------------------
class _Recorder:
    def __init__(self, paths: dict[int, tuple], root: Module, flops: bool, vjp_flops: bool):
        self.paths = paths
        self.root = root
        self.flops = flops
        self.vjp_flops = vjp_flops
        self.calls: list[CallInfo] = []
        self.active: set[int] = set()  # objects inside a recorded call (super() calls)
        self.suspended = False

    def call(self, module: Module, fn: tp.Callable, args: tuple, kwargs: dict) -> tp.Any:
        if self.suspended or id(module) in self.active:
            return fn(module, *args, **kwargs)
        path = self.paths.get(id(module))
        if path is None:  # a module created during the call
            path = ("<new>", type(module).__name__)
        info = CallInfo(path, type(module), (args, kwargs), None)
        self.calls.append(info)
        if self.flops or self.vjp_flops:
            self.suspended = True
            try:
                info.flops, info.vjp_flops = _call_flops(
                    module, fn, args, kwargs, self.flops, self.vjp_flops
                )
            finally:
                self.suspended = False
        self.active.add(id(module))
        try:
            info.outputs = fn(module, *args, **kwargs)
        finally:
            self.active.discard(id(module))
        return info.outputs


def _patch(classes: set[type], recorder: _Recorder) -> list[tuple[type, tp.Any]]:
    undo: list[tuple[type, tp.Any]] = []
    resolved = {}  # resolved before any class is patched; instance __call__ only (not type's)
    for cls in classes:
        fn = next((c.__dict__["__call__"] for c in cls.__mro__ if "__call__" in c.__dict__), None)
        if fn is not None:
            resolved[cls] = fn
    for cls, fn in resolved.items():
        original = cls.__dict__.get("__call__", None)

        def wrapper(self: Module, *args: tp.Any, _fn: tp.Callable = fn, **kwargs: tp.Any) -> tp.Any:
            return recorder.call(self, _fn, args, kwargs)

        undo.append((cls, original))
        type.__setattr__(cls, "__call__", wrapper)
    return undo


def _unpatch(undo: list[tuple[type, tp.Any]]) -> None:
    for cls, original in reversed(undo):
        if original is None:
            type.__delattr__(cls, "__call__")
        else:
            type.__setattr__(cls, "__call__", original)


# -- FLOPs --------------------------------------------------------------------------------------
def _cost(compiled: tp.Any) -> float | None:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return None if cost is None else float(cost.get("flops", 0.0))


def _call_flops(module: Module, fn: tp.Callable, args: tuple, kwargs: dict,
                forward: bool, vjp: bool) -> tuple[float | None, float | None]:
    """FLOPs of `fn(module, *args, **kwargs)` (and of its VJP), from XLA's cost analysis."""
    graphdef, state = core.split(module)
    leaves, treedef = jax.tree.flatten((state, args, kwargs))
    dyn = [i for i, x in enumerate(leaves) if is_array(x)]

    def run(values: list) -> tp.Any:
        full = list(leaves)
        for i, v in zip(dyn, values):
            full[i] = v
        st, a, k = treedef.unflatten(full)
        return fn(core.merge(graphdef, st), *a, **k)

    values = [leaves[i] for i in dyn]
    result: list[float | None] = [None, None]
    try:
        if forward:
            result[0] = _cost(jax.jit(run).lower(values).compile())
        if vjp:
            diff = [j for j, v in enumerate(values) if jnp.issubdtype(jnp.result_type(v), jnp.inexact)]

            def pullback(values: list) -> tp.Any:
                def on_diff(d: list) -> tp.Any:
                    vals = list(values)
                    for j, v in zip(diff, d):
                        vals[j] = v
                    return run(vals)

                out, back = jax.vjp(on_diff, [values[j] for j in diff])
                return back(jax.tree.map(jnp.ones_like, out))

            result[1] = _cost(jax.jit(pullback).lower(values).compile())
    except Exception:  # noqa: BLE001 - a cost we cannot compute is shown as n/a
        pass
    return result[0], result[1]


# -- the table ------------------------------------------------------------------------------------
def _render(title: str, header: list[str], rows: list[list[list[str]]], footer: str) -> str:
    widths = [len(h) for h in header]
    for row in rows:
        for j, cell in enumerate(row):
            widths[j] = max([widths[j], *(len(s) for s in cell)])
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    out = [title.center(len(rule)).rstrip(), rule, line(header), rule.replace("-", "=")]
    for i, row in enumerate(rows):
        height = max(1, *(len(c) for c in row))
        for k in range(height):
            out.append(line([c[k] if k < len(c) else "" for c in row]))
        out.append(rule)
    out.append(footer.center(len(rule)).rstrip())
    return "\n".join(out)


def _flops_str(x: float | None) -> str:
    return "n/a" if x is None else f"{int(x):,}"


def tabulate(
    module: Module,
    *inputs: tp.Any,
    depth: int | None = None,
    method: str = "__call__",
    row_filter: tp.Callable[[CallInfo], bool] | None = None,
    compute_flops: bool = False,
    compute_vjp_flops: bool = False,
    console_kwargs: tp.Mapping[str, tp.Any] | None = None,
    table_kwargs: tp.Mapping[str, tp.Any] | None = None,
    column_kwargs: tp.Mapping[str, tp.Any] | None = None,
    **input_kwargs: tp.Any,
) -> str:
    """A plain-text summary table of `module(*inputs, **input_kwargs)`.

    One row per module call up to `depth` (root = depth 0), with input and
    output shapes, optional FLOPs, and for each Variable type the count and
    bytes in that module's sub-tree; then a total row. `table_kwargs["title"]`
    overrides the title; the other `*_kwargs` (rich options in Flax) are ignored.
    """
    if not isinstance(module, Module):
        raise TypeError(f"tabulate: expected an nnx.Module, got {type(module).__name__}.")
    if not callable(getattr(module, method, None)):
        raise AttributeError(f"tabulate: {type(module).__name__} has no method {method!r}.")
    clone = core.clone(module)
    modules = list(iter_modules(clone))
    paths = {id(m): path for path, m in modules}
    stats = {id(m): _stats(m) for _, m in modules}
    recorder = _Recorder(paths, clone, compute_flops, compute_vjp_flops)
    undo = _patch({type(m) for _, m in modules}, recorder)
    try:
        recorder.call(clone, lambda m, *a, **k: getattr(m, method)(*a, **k), inputs, input_kwargs)
    finally:
        _unpatch(undo)

    calls = [c for c in recorder.calls if depth is None or len(c.path) <= depth]
    if row_filter is not None:
        calls = [c for c in calls if row_filter(c)]
    by_path = {path: stats[i] for i, path in paths.items()}
    total = _stats(clone)
    columns = sorted(total.totals)
    header = ["path", "type", "inputs", "outputs"]
    header += ["flops"] * compute_flops + ["vjp_flops"] * compute_vjp_flops + columns
    rows = []
    for c in calls:
        s = by_path.get(c.path, _Stats({}, {}))
        row = [["/".join(str(p) for p in c.path)], [c.type.__name__],
               _input_lines(*c.inputs), _value_lines(c.outputs)]
        row += [[_flops_str(c.flops)]] * compute_flops + [[_flops_str(c.vjp_flops)]] * compute_vjp_flops
        for col in columns:
            cell = list(s.direct.get(col, []))
            if col in s.totals:
                cell.append(_count_str(*s.totals[col]))
            row.append(cell)
        rows.append(row)
    n_extra = compute_flops + compute_vjp_flops
    rows.append([[""], [""], [""], ["Total"]] + [[""]] * n_extra
                + [[_count_str(*total.totals[col])] for col in columns])
    size = sum(c for c, _ in total.totals.values())
    nbytes = sum(b for _, b in total.totals.values())
    title = (table_kwargs or {}).get("title", f"{type(module).__name__} Summary")
    return _render(title, header, rows, f"Total Parameters: {_count_str(size, nbytes)}")


def display(*objects: tp.Any) -> None:
    """Show objects with treescope in a notebook if available, else print their repr."""
    try:
        import treescope
    except ImportError:
        treescope = None
    for obj in objects:
        if treescope is not None:
            try:
                treescope.display(obj)
                continue
            except RuntimeError:  # not inside IPython
                pass
        print(repr(obj))


__all__ = ["CallInfo", "display", "tabulate"]
