"""`tabulate`: a table of a module's method calls, shapes and Variables.

The module is cloned and every graph object in the clone is tagged with an
id (a static attribute, so the tag survives `split`/`merge` and therefore
`nnx.vmap`/`nnx.scan`: a call on the stacked copy inside a transform is
reported under the original path, e.g. `blocks`). The public methods and
`__call__` of the objects' classes are then intercepted while
`method(*inputs)` runs once, giving one row per distinct call (root first,
in call order) with its inputs, outputs and, per Variable type, the count and
bytes of that object's sub-tree. The table is drawn with `rich` when it is
installed (honouring `table_kwargs`, `column_kwargs`, `console_kwargs`, as
in flax), else in plain text. The original module is never touched.

>>> from nnxfn.facade.rngs import Rngs
>>> from nnxfn.nn.linear import Linear
>>> table = tabulate(Linear(3, 4, rngs=Rngs(0)), jnp.ones((2, 3)))
>>> "Total Parameters: 16 (64 B)" in table
True
"""

from __future__ import annotations

import dataclasses
import inspect
import typing as tp
from types import MappingProxyType

import jax
import jax.numpy as jnp
import numpy as np

from nnxfn import core
from nnxfn.core.graph import is_array
from nnxfn.facade.module import Module, Object
from nnxfn.facade.rngs import RngStream
from nnxfn.facade.variables import RngState, Variable
from nnxfn.nn import summary_table as cells
from nnxfn.nn.types import Array

Key = tp.Hashable  # an attribute name or an index
Method = tp.Callable[..., object]  # a function of the class, called as `fn(obj, *args, **kwargs)`

_TAG = "_nnxfn_tabulate_id"
_BASES = (Object, Module)  # their own methods (sow, train, ...) are infrastructure, not rows


@dataclasses.dataclass
class CallInfo:
    """One recorded call (a table row); `row_filter` receives these."""

    call_order: int
    object_id: int
    type: type
    path: tuple[Key, ...]
    inputs_repr: str
    outputs: object
    flops: float | None = None
    vjp_flops: float | None = None
    inputs_cell: cells.Cell = dataclasses.field(default_factory=list, repr=False)


def filter_rng_streams(row: CallInfo) -> bool:
    """The default `row_filter`: hide calls on `RngStream` objects."""
    return not issubclass(row.type, RngStream)


# -- per-object statistics ---------------------------------------------------------------------
def _group(var_type: type) -> type:
    """Column for a Variable type: its own type (RngKey/RngCount -> RngState)."""
    return RngState if issubclass(var_type, RngState) else var_type


def _size_bytes(x: object) -> tuple[int, int]:
    x = x.raw_value if isinstance(x, Variable) else x
    shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
    if shape is None or dtype is None:  # not an array
        return 0, 0
    size = int(np.prod(shape, dtype=np.int64))
    nbytes = getattr(x, "nbytes", None)
    if nbytes is None:
        nbytes = size * jnp.dtype(dtype).itemsize
    return size, int(nbytes)


@dataclasses.dataclass
class _Stats:
    path: tuple[Key, ...]
    totals: dict[type, list[int]] = dataclasses.field(default_factory=dict)  # column -> [count, bytes]
    own: dict[type, dict[Key, Variable]] = dataclasses.field(default_factory=dict)  # column -> {name: var}


def _collect(root: Object) -> tuple[dict[int, _Stats], dict[type, list[int]]]:
    """Stats per graph object (by the tag given to it), and the totals per column.

    Each object and Variable is counted once, under the first path that reaches it.
    """
    by_path: dict[tuple, _Stats] = {}
    stats: dict[int, _Stats] = {}
    for path, node in core.iter_graph(root):
        if isinstance(node, Object):
            info = by_path[path] = _Stats(path)
            tag = len(stats)
            object.__setattr__(node, _TAG, tag)  # no structure bump: the clone is private
            _mark_static(node)
            stats[tag] = info
    for path, leaf in core.iter_graph(root):
        if not isinstance(leaf, Variable):
            continue
        col = _group(type(leaf))
        size, nbytes = _size_bytes(leaf)
        owner = by_path.get(path[:-1])
        if owner is not None:
            owner.own.setdefault(col, {})[path[-1]] = leaf
        for k in range(len(path)):
            above = by_path.get(path[:k])
            if above is not None:
                total = above.totals.setdefault(col, [0, 0])
                total[0] += size
                total[1] += nbytes
    return stats, by_path[()].totals


def _mark_static(node: Object) -> None:
    statics = node.__dict__.get("_nnx_static", frozenset())
    object.__setattr__(node, "_nnx_static", statics | {_TAG})


# -- intercepting calls ------------------------------------------------------------------------
class _Recorder:
    def __init__(self, stats: dict[int, _Stats], node_types: tuple[type, ...], flops: bool, vjp_flops: bool):
        self.stats = stats
        self.node_types = node_types
        self.flops = flops
        self.vjp_flops = vjp_flops
        self.rows: list[CallInfo] = []
        self.seen: set[tuple] = set()
        self.active: set[tuple] = set()  # (tag, method) running now: super() calls are not rows
        self.suspended = False

    def call(
        self, obj: Object, name: str, fn: Method, args: tuple[object, ...], kwargs: dict[str, object]
    ) -> object:
        tag = getattr(obj, "__dict__", {}).get(_TAG)
        if self.suspended or tag is None or (tag, name) in self.active:
            return fn(obj, *args, **kwargs)
        inputs = cells.inputs_cell(args, kwargs, self.node_types)
        inputs_repr = cells.text(inputs)
        info = None
        if (inputs_repr, tag, name) not in self.seen:
            self.seen.add((inputs_repr, tag, name))
            path = self.stats[tag].path + ((name,) if name != "__call__" else ())
            info = CallInfo(len(self.rows), tag, type(obj), path, inputs_repr, None, inputs_cell=inputs)
            self.rows.append(info)
        self.active.add((tag, name))
        try:
            if self.flops or (info is not None and self.vjp_flops):
                outputs, flops, vjp_flops = self._measured(obj, fn, args, kwargs, info is not None)
                if info is not None:
                    info.flops, info.vjp_flops = flops, vjp_flops
            else:
                outputs = fn(obj, *args, **kwargs)
        finally:
            self.active.discard((tag, name))
        if info is not None:
            info.outputs = outputs
        return outputs

    def _measured(
        self, obj: Object, fn: Method, args: tuple[object, ...], kwargs: dict[str, object], new_row: bool
    ) -> tuple[object, float | None, float | None]:
        """Run the call through `jax.jit`, reading XLA's FLOP estimate from the lowering.

        The body is traced once (calls nested in it are recorded then); the
        jitted call that produces the outputs reuses that trace.
        """
        graphdef, state = core.split(obj)
        leaves, treedef = jax.tree.flatten((state, args, kwargs))
        dynamic = [i for i, x in enumerate(leaves) if is_array(x)]

        def run(values: list[Array]) -> object:
            full = list(leaves)
            for i, v in zip(dynamic, values):
                full[i] = v
            st, a, k = jax.tree.unflatten(treedef, full)
            return fn(core.merge(graphdef, st), *a, **k)

        values = [leaves[i] for i in dynamic]
        jitted = jax.jit(run)
        flops = vjp_flops = None
        if self.flops:
            lowered = jitted.lower(values)
            flops = _cost(lowered)
        if self.vjp_flops and new_row:
            self.suspended = True
            try:
                vjp_flops = _vjp_cost(run, values)
            finally:
                self.suspended = False
        return jitted(values), flops, vjp_flops


def _methods(cls: type) -> dict[str, Method]:
    """`__call__` and the public methods of `cls` (inherited ones included)."""
    found: dict[str, Method] = {}
    for name, fn in inspect.getmembers(cls, inspect.isfunction):
        if name.startswith("_") and name != "__call__":
            continue
        if isinstance(inspect.getattr_static(cls, name), (staticmethod, classmethod)):
            continue
        owner = next(c for c in cls.__mro__ if name in c.__dict__)
        if owner in _BASES:
            continue
        found[name] = fn
    return found


def _patch(classes: set[type], recorder: _Recorder) -> list[tuple[type, str, object]]:
    resolved = {cls: _methods(cls) for cls in classes}  # before any class is patched
    undo: list[tuple[type, str, object]] = []
    for cls, methods in resolved.items():
        for name, fn in methods.items():

            def wrapper(
                self: Object, *args: object, _fn: Method = fn, _name: str = name, **kwargs: object
            ) -> object:
                return recorder.call(self, _name, _fn, args, kwargs)

            wrapper.__name__ = name
            wrapper._nnxfn_tabulate = True  # type: ignore[attr-defined]  # a marker read by getattr
            undo.append((cls, name, cls.__dict__.get(name, None)))
            type.__setattr__(cls, name, wrapper)
    return undo


def _unpatch(undo: list[tuple[type, str, object]]) -> None:
    for cls, name, original in reversed(undo):
        if original is None:
            type.__delattr__(cls, name)
        else:
            type.__setattr__(cls, name, original)


# -- FLOPs -----------------------------------------------------------------------------------------
def _cost(lowered: jax.stages.Lowered) -> float | None:
    cost = lowered.cost_analysis()
    if not cost:
        cost = lowered.compile().cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return None if cost is None else float(cost.get("flops", 0.0))


def _vjp_cost(run: tp.Callable[[list[Array]], object], values: list[Array]) -> float | None:
    diff = [j for j, v in enumerate(values) if jnp.issubdtype(jnp.result_type(v), jnp.inexact)]

    def pullback(values: list[Array]) -> object:
        def on_diff(d: list[Array]) -> object:
            vals = list(values)
            for j, v in zip(diff, d):
                vals[j] = v
            return run(vals)

        out, back = jax.vjp(on_diff, [values[j] for j in diff])
        return back(jax.tree.map(jnp.ones_like, out))

    try:
        return _cost(jax.jit(pullback).lower(values))
    except Exception:  # noqa: BLE001 - a cost we cannot compute is shown as n/a
        return None


def _flops_cell(x: float | None) -> cells.Cell:
    return [[("n/a" if x is None else f"{int(x):,}", None)]]


# -- the table ---------------------------------------------------------------------------------------
def _variable_cell(info: _Stats, col: type) -> cells.Cell:
    lines: cells.Cell = []
    for name, var in sorted(info.own.get(col, {}).items(), key=lambda kv: str(kv[0])):
        value = var.raw_value
        shown = cells.array_segments(value) if hasattr(value, "shape") and hasattr(value, "dtype") else []
        required = getattr(type(var), "required_metadata", ())
        meta = {k: v for k, v in var.get_metadata().items() if not k.startswith("_") and k not in required}
        if meta:
            lines.append([(f"{name}:", None)])
            lines += [[(f"  {k}: ", None), *cells.value_lines(v)[0]] for k, v in sorted(meta.items())]
            if shown:
                lines.append([("  value: ", None), *shown])
        elif shown:
            lines.append([(f"{name}: ", None), *shown])
    total = info.totals.get(col)
    if total:
        if lines:
            lines.append([])
        lines.append(cells.count_segments(total[0], total[1], bold=True))
    return lines


def _record_calls(
    clone: Object,
    recorder: _Recorder,
    method: str,
    input_args: tuple[object, ...],
    input_kwargs: dict[str, object],
) -> None:
    """Run `clone.method(*input_args, **input_kwargs)` with every graph class patched to record its calls."""
    classes = {type(node) for _, node in core.iter_graph(clone) if isinstance(node, Object)}
    undo = _patch(classes, recorder)
    try:
        fn = inspect.getattr_static(clone, method, None)
        if getattr(fn, "_nnxfn_tabulate", False):
            fn(clone, *input_args, **input_kwargs)
        else:  # a private method, or a callable attribute: record the root call itself
            recorder.call(
                clone, method, lambda obj, *a, **k: getattr(obj, method)(*a, **k), input_args, input_kwargs
            )
    finally:
        _unpatch(undo)


def _table_row(
    r: CallInfo,
    info: _Stats,
    columns: list[type],
    node_types: tuple[type, ...],
    compute_flops: bool,
    compute_vjp_flops: bool,
) -> list[cells.Cell]:
    """The cells of one call's row: path, type, inputs, outputs, flops, then one per Variable type."""
    row: list[cells.Cell] = [
        [[("/".join(str(p) for p in r.path), None)]],
        [[(r.type.__name__, None)]],
        r.inputs_cell,
        cells.top_lines(r.outputs, node_types),
    ]
    row += [_flops_cell(r.flops)] * compute_flops + [_flops_cell(r.vjp_flops)] * compute_vjp_flops
    row += [_variable_cell(info, col) for col in columns]
    return row


def tabulate(
    obj: Object,
    *input_args: object,
    depth: int | None = None,
    method: str = "__call__",
    row_filter: tp.Callable[[CallInfo], bool] = filter_rng_streams,
    table_kwargs: tp.Mapping[str, tp.Any] = MappingProxyType({}),
    column_kwargs: tp.Mapping[str, tp.Any] = MappingProxyType({}),
    console_kwargs: tp.Mapping[str, tp.Any] = MappingProxyType({}),
    compute_flops: bool = False,
    compute_vjp_flops: bool = False,
    **input_kwargs: object,
) -> str:
    """A summary table of `getattr(obj, method)(*input_args, **input_kwargs)`.

    One row per distinct call of `__call__` or a public method on an object of
    the graph, up to `depth` (root = depth 0; a method other than `__call__`
    adds its name to the path), with inputs and outputs (arrays as
    `float32[2,3]`), optional `flops`/`vjp_flops` columns, and for each
    Variable type the object's own Variables and its sub-tree's count and
    bytes; a footer with the totals. Layers stacked by `nnx.vmap`/`nnx.scan`
    are reported under their attribute (`blocks`). With `rich` installed the
    table is a `rich.table.Table(**table_kwargs)` with columns made by
    `add_column(name, **column_kwargs)`, printed by
    `rich.console.Console(**console_kwargs)` (defaults: `force_terminal=True`,
    `force_jupyter` inside IPython); without it, a plain-text table.
    """
    if not isinstance(obj, Object):
        raise TypeError(
            f"tabulate: expected an nnx.Module (or another nnx.Pytree), got {type(obj).__name__}."
        )
    if not callable(getattr(obj, method, None)):
        raise AttributeError(f"tabulate: {type(obj).__name__} has no method {method!r}.")
    clone = core.clone(obj)
    stats, totals = _collect(clone)
    node_types = (Object,)
    recorder = _Recorder(stats, node_types, compute_flops, compute_vjp_flops)
    _record_calls(clone, recorder, method, input_args, input_kwargs)
    rows = [r for r in recorder.rows if (depth is None or len(r.path) <= depth) and row_filter(r)]
    columns = sorted(totals, key=lambda t: t.__name__)
    header = ["path", "type", "inputs", "outputs"]
    header += ["flops"] * compute_flops + ["vjp_flops"] * compute_vjp_flops
    header += [c.__name__ for c in columns]
    table_rows = [
        _table_row(r, stats[r.object_id], columns, node_types, compute_flops, compute_vjp_flops) for r in rows
    ]
    n_before = 4 + compute_flops + compute_vjp_flops
    footer = [""] * n_before + [
        cells.text([cells.count_segments(totals[c][0], totals[c][1])]) for c in columns
    ]
    size = sum(c for c, _ in totals.values())
    nbytes = sum(b for _, b in totals.values())
    caption = f"Total Parameters: {cells.text([cells.count_segments(size, nbytes)])}"
    title = f"{type(obj).__name__} Summary"
    try:
        import rich  # noqa: F401
    except ImportError:
        title = dict(table_kwargs).get("title", title)
        footer[n_before - 1] = "Total"
        return cells.render_plain(title, header, table_rows, footer, caption)
    return cells.render_rich(
        title, header, table_rows, footer, caption, n_before - 1, table_kwargs, column_kwargs, console_kwargs
    )


def display(*objects: object) -> None:
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


__all__ = ["CallInfo", "display", "filter_rng_streams", "tabulate"]
