"""`nnx.scan`: `jax.lax.scan` for functions of Modules.

`in_axes` marks one argument as the `Carry` (threaded through iterations;
modules in it keep their state across steps), ints for arguments scanned
along that axis (e.g. a stack of layers made with `nnx.vmap`), `None` for
broadcast arguments. `out_axes` marks the output the same way (`None` is not
allowed: outputs are either carried or stacked).

- Scanned state that the body *writes* leaves the scan stacked; parameters
  that are only read are not outputs, so they are not copied.
- Broadcast state the body writes (e.g. BatchNorm statistics, an Rngs
  counter) is threaded through the iterations like a carry: each step sees
  the previous step's value and the last one is committed.
- Variables the body creates (e.g. `self.sow(...)`) leave stacked along the
  axis their argument's `in_axes` gives them (it must be an int); Variables
  it removes (or replaces, e.g. a Param by a pytree of Params) are gone
  after the scan, as in Flax.
- A carried output must be the carried input object itself, not a new one.

The traced scan is cached per argument structure (like `nnx.jit`), so calling
the same scanned function again with same-shaped arguments does not retrace.
"""

from __future__ import annotations

import dataclasses
import functools
import typing as tp

import jax
import jax.numpy as jnp
from jax.api_util import flatten_axes

from nnxfn.core import caches, errors
from nnxfn.transforms import boundary, spmd
from nnxfn.transforms.boundary import Leaf, Path
from nnxfn.transforms.axes import (
    StateAxes,
    check_axes_not_objects,
    check_shared_leaf_specs,
    variable_templates,
    entry_axes,
    leaf_specs,
    resolve,
)
from nnxfn.transforms.common import (
    Carry as Carry,
    MethodWrapper,
    Static,
    check_not_bound,
    run_inside,
    signature_of,
    to_positional,
    tracing_scan_body,
)
from nnxfn.transforms.treemode import Rules, lifted


def _moveaxis(x: tp.Any, src: int, dst: int) -> tp.Any:
    return x if src == dst else jnp.moveaxis(x, src, dst)


class _BroadcastWritten(Exception):
    """Raised while tracing: the body wrote broadcast state leaves (their indices),
    which must be carried instead; the scan is traced again with them carried."""

    def __init__(self, indices: set[int]):
        self.indices = indices


#: what one value leaving the body becomes: ('carry', slot), ('ys', axis) or ('keep', index)
Role = tuple[str, int]


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What each value leaving the body becomes (decided while tracing)."""

    exit: boundary.ExitStatic
    emitted: tuple[Role, ...]  # per emitted value: ('carry', slot) | ('ys', axis) | ('keep', i)
    out: tuple[Role, ...]  # per output array: ('carry', slot) | ('ys', axis)


class _Layout(tp.NamedTuple):
    """Where each leaf goes in `jax.lax.scan`: state (`_s`) and other (`_o`) leaf
    indices that are carried, scanned over, or fixed (broadcast to every step)."""

    carry_s: list[int]
    scan_s: list[int]
    fixed_s: list[int]
    carry_o: list[int]
    scan_o: list[int]
    fixed_o: list[int]


class _Scanned(MethodWrapper):
    def __init__(
        self,
        fn: tp.Callable,
        in_axes: tp.Any,
        out_axes: tp.Any,
        length: int | None,
        reverse: bool,
        unroll: int | bool,
        transform_metadata: tp.Mapping | None = None,
        split_transpose: bool = False,
    ):
        check_not_bound(fn, "nnx.scan")
        check_axes_not_objects("nnx.scan", in_axes, "in_axes")
        check_axes_not_objects("nnx.scan", out_axes, "out_axes")
        _validate_axes(in_axes, out_axes)
        functools.update_wrapper(self, fn)
        self.fn, self.in_axes, self.out_axes = fn, in_axes, out_axes
        self.length, self.reverse, self.unroll = length, reverse, unroll
        self.transform_metadata = transform_metadata
        self.split_transpose = split_transpose
        self._sig = signature_of(fn)
        # Memos kept on this object across calls (off with `NNXFN_CACHE=0`): the jitted
        # scan per argument structure, and the broadcast leaves learned to be written.
        self._cache: dict[tp.Hashable, tp.Callable[..., tp.Any]] = {}
        self._carried_broadcast: dict[tp.Hashable, frozenset[int]] = {}

    def __call__(self, *args: object, **kwargs: object) -> tp.Any:
        args, kwargs = to_positional(self._sig, args, kwargs, "nnx.scan")
        if kwargs:
            raise TypeError(
                f"nnx.scan: keyword-only arguments {sorted(kwargs)} have no position for "
                "in_axes to refer to; make them positional parameters of the function."
            )
        if self.in_axes is Carry and len(args) != 1:
            raise ValueError(
                "nnx.scan: When in_axes=Carry, the function must take exactly one argument "
                f"(the carry), got {len(args)} arguments. Use in_axes=(nnx.Carry, 0, ...) "
                "to mark one argument as the carry."
            )
        entry = boundary.enter(args, {})
        specs = leaf_specs("nnx.scan", self.in_axes, (args, {}), kwargs_spec=None)
        check_shared_leaf_specs("nnx.scan", entry, specs, "in_axes")
        state_axes, other_axes = entry_axes(entry, specs)
        for i, axis in enumerate(state_axes):
            _check_in_axis(axis, entry.static.paths[i])
        base = (entry.static, tuple(map(_axis_key, state_axes)), tuple(map(_axis_key, other_axes)))
        extra = self._carried_broadcast.get(base, frozenset())
        while True:
            try:
                return self._run(entry, specs, state_axes, other_axes, base, extra)
            except _BroadcastWritten as e:
                extra = extra | frozenset(e.indices)
                if not caches.enabled():
                    continue
                self._carried_broadcast[base] = extra
                if len(self._carried_broadcast) > 64:
                    self._carried_broadcast.pop(next(iter(self._carried_broadcast)))

    def _run(
        self,
        entry: boundary.EntryRecord,
        specs: list,
        state_axes: list,
        other_axes: list,
        base: tuple,
        extra: frozenset,
    ) -> tp.Any:
        n = len(state_axes)
        layout = _Layout(
            carry_s=[i for i in range(n) if state_axes[i] is Carry] + sorted(extra),
            scan_s=[i for i in range(n) if _is_int(state_axes[i])],
            fixed_s=[i for i in range(n) if state_axes[i] is None and i not in extra],
            carry_o=[i for i, a in enumerate(other_axes) if a is Carry],
            scan_o=[i for i, a in enumerate(other_axes) if _is_int(a)],
            fixed_o=[i for i, a in enumerate(other_axes) if a is None],
        )
        carry_s, scan_s, fixed_s = layout.carry_s, layout.scan_s, layout.fixed_s
        carry_o, scan_o, fixed_o = layout.carry_o, layout.scan_o, layout.fixed_o
        key = (base, extra)
        run = self._cache.get(key)
        if run is None:
            scanned = [a if _is_int(a) else None for a in state_axes]
            inner = spmd.inner_static("nnx.scan", entry, scanned, self.transform_metadata)
            run = self._make(entry.static, len(entry.others), inner, specs, state_axes, layout)
            if caches.enabled():
                if len(self._cache) >= 16:
                    self._cache.pop(next(iter(self._cache)))
                self._cache[key] = run
        init = ([entry.values[i] for i in carry_s], [entry.others[i] for i in carry_o])
        xs = (
            [_moveaxis(entry.values[i], state_axes[i], 0) for i in scan_s],
            [_moveaxis(entry.others[i], other_axes[i], 0) for i in scan_o],
        )
        consts = ([entry.values[i] for i in fixed_s], [entry.others[i] for i in fixed_o])
        aux, (carry_s_out, carry_o_out), (ys_state, ys_out) = run(consts, init, xs)
        plan: _Plan = aux.value
        return self._finish(entry, plan, state_axes, carry_s_out, carry_o_out, ys_state, ys_out)

    def _make(
        self,
        static: boundary.EntryStatic,
        n_others: int,
        inner: boundary.EntryStatic,
        specs: list,
        state_axes: list,
        layout: _Layout,
    ) -> tp.Callable[..., tp.Any]:
        """The jitted `(consts, init, xs) -> (plan, carry, ys)` for one argument structure
        (it holds no argument values: the caller's objects are not kept alive)."""
        carry_s, scan_s, fixed_s = layout.carry_s, layout.scan_s, layout.fixed_s
        carry_o, scan_o, fixed_o = layout.carry_o, layout.scan_o, layout.fixed_o
        n_values = len(state_axes)
        emit_all = set(carry_s)
        slot = {i: k for k, i in enumerate(carry_s)}
        fn, out_axes = self.fn, self.out_axes
        length, reverse, unroll, split_transpose = (
            self.length,
            self.reverse,
            self.unroll,
            self.split_transpose,
        )
        node_specs = [specs[p] for p in static.node_positions]

        def scan_call(consts: tuple, init: tuple, xs: tuple) -> tuple:
            cell: dict = {}

            def body(carry: tuple, x: tuple) -> tuple:
                values, others = [None] * n_values, [None] * n_others
                for group, vals in ((carry_s, carry[0]), (scan_s, x[0]), (fixed_s, consts[0])):
                    for i, v in zip(group, vals):
                        values[i] = v
                for group, vals in ((carry_o, carry[1]), (scan_o, x[1]), (fixed_o, consts[1])):
                    for i, v in zip(group, vals):
                        others[i] = v
                with tracing_scan_body():
                    exit_static, out_arrays, emitted = run_inside(
                        fn, inner, values, others, "nnx.scan", emit_all=emit_all
                    )
                plan = _plan(
                    exit_static, emitted, values, static.paths, state_axes, slot, node_specs, out_axes
                )
                cell["plan"] = plan
                new_carry_s: list[Leaf] = [None] * len(carry_s)
                ys_state: list[Leaf] = []
                for (kind, arg), v in zip(plan.emitted, emitted):
                    if kind == "carry":
                        new_carry_s[arg] = v
                    elif kind == "ys":
                        ys_state.append(v)
                new_carry_o = [v for (kind, _), v in zip(plan.out, out_arrays) if kind == "carry"]
                ys_out = [v for (kind, _), v in zip(plan.out, out_arrays) if kind == "ys"]
                return (new_carry_s, new_carry_o), (ys_state, ys_out)

            carry: tp.Any
            ys: tp.Any
            carry, ys = jax.lax.scan(
                body,
                init,
                xs,
                length=length,
                reverse=reverse,
                unroll=unroll,
                _split_transpose=split_transpose,
            )
            return Static(cell["plan"]), carry, ys

        return jax.jit(scan_call)

    def _finish(
        self,
        entry: boundary.EntryRecord,
        plan: _Plan,
        state_axes: list,
        carry_s_out: list,
        carry_o_out: list,
        ys_state: list,
        ys_out: list,
    ) -> tp.Any:
        exit_static = plan.exit
        emitted, y_it = [], iter(ys_state)
        for kind, arg in plan.emitted:
            if kind == "carry":
                emitted.append(carry_s_out[arg])
            elif kind == "ys":
                emitted.append(_moveaxis(next(y_it), 0, arg))
            else:  # read only: the caller's value
                emitted.append(entry.values[arg])
        out_arrays, c_it, y_it = [], iter(carry_o_out), iter(ys_out)
        for kind, axis in plan.out:
            out_arrays.append(next(c_it) if kind == "carry" else _moveaxis(next(y_it), 0, axis))
        if self.transform_metadata:
            axes = [arg if kind == "ys" else None for kind, arg in plan.emitted]
            scanned = [a if _is_int(a) else None for a in state_axes]
            exit_static = spmd.outer_exit(
                "nnx.scan", exit_static, entry, scanned, axes, emitted, self.transform_metadata
            )
        return boundary.commit(entry, exit_static, out_arrays, emitted)


def _plan(
    exit_static: boundary.ExitStatic,
    emitted: list,
    values: list,
    paths: tuple,
    state_axes: list,
    slot: dict[int, int],
    node_specs: list,
    out_axes: tp.Any,
) -> _Plan:
    """Decide, while tracing, what each emitted value and output array becomes."""
    out_flat = flatten_axes("nnx.scan out_axes", exit_static.out_treedef, out_axes)
    node_out_axes = [out_flat[p] for p in exit_static.out_positions]
    _check_carried_outputs(exit_static, node_out_axes)
    new_paths = _created_paths(exit_static, emitted, values, paths, state_axes, slot)
    new_roles = _created_roles(exit_static, new_paths, node_specs, node_out_axes)
    if exit_static.changed is not None:
        roles = [_input_role(state_axes, slot, i, True) for i in exit_static.changed]
        roles += [new_roles[p] for p in new_paths]
    else:
        index = {(0,) + p: i for i, p in enumerate(paths)}
        roles = []
        for path, value in zip(exit_static.paths, emitted):
            i = index.get(path)
            roles.append(
                new_roles[path] if i is None else _input_role(state_axes, slot, i, value is not values[i])
            )
    return _Plan(exit_static, tuple(roles), _output_roles(exit_static, out_flat))


def _input_role(state_axes: list[object], slot: dict[int, int], i: int, written: bool) -> Role:
    """What input state leaf `i` becomes: carried, stacked as ys, or kept (not emitted)."""
    axis = state_axes[i]
    if i in slot:
        return ("carry", slot[i])
    if axis is None:
        if written:
            raise _BroadcastWritten({i})
        return ("keep", i)
    assert _is_int(axis)  # neither carried nor broadcast: scanned (`_check_in_axis`)
    return ("ys", axis) if written else ("keep", i)


def _created_paths(
    exit_static: boundary.ExitStatic,
    emitted: list,
    values: list,
    paths: tuple,
    state_axes: list,
    slot: dict[int, int],
) -> tuple[Path, ...]:
    """Paths of the leaves the body created; raises `_BroadcastWritten` if it wrote
    broadcast state, and a ValueError if it removed carried state."""
    if exit_static.changed is not None:
        written_broadcast = {i for i in exit_static.changed if state_axes[i] is None and i not in slot}
        if written_broadcast:
            raise _BroadcastWritten(written_broadcast)
        return exit_static.paths[len(exit_static.changed) :] if exit_static.graphdef is not None else ()
    # structure changed: every leaf was emitted. A scanned or broadcast leaf the body
    # removed is simply not emitted (the new structure drops it); a carried one would
    # change the carry's structure.
    index = {(0,) + p: i for i, p in enumerate(paths)}
    found = set()
    new_paths = []
    written_broadcast = set()
    for path, value in zip(exit_static.paths, emitted):
        i = index.get(path)
        if i is None:
            new_paths.append(path)
            continue
        found.add(i)
        if value is not values[i] and state_axes[i] is None and i not in slot:
            written_broadcast.add(i)
    if written_broadcast:
        raise _BroadcastWritten(written_broadcast)
    dropped = [paths[i] for i in slot if i not in found]
    if dropped:
        raise ValueError(
            f"nnx.scan: the body removed the carried {errors.path_str(dropped[0][1:], 'arg')}; "
            "a carry must keep its structure across iterations. Remove it before the scan, "
            "or pass its module scanned (an int in_axes) instead of carried."
        )
    return tuple(new_paths)


def _created_roles(
    exit_static: boundary.ExitStatic,
    new_paths: tp.Sequence[Path],
    node_specs: list,
    node_out_axes: list,
) -> dict[Path, Role]:
    """The leaves the body created leave stacked: their int axis, by path."""
    if not new_paths:
        return {}
    assert exit_static.graphdef is not None  # leaves were created: the structure is described
    templates = variable_templates(exit_static.graphdef)
    roles: dict[Path, Role] = {}
    for path in new_paths:
        spec = node_specs[path[1]] if path[0] == 0 else node_out_axes[path[1]]
        axis = resolve(spec, path[2:], templates.get(path))
        if not _is_int(axis):
            where = errors.path_str(path[2:], "arg" if path[0] == 0 else "out")
            raise ValueError(
                f"nnx.scan: the body created {where}, whose axis is {axis!r}; state created "
                "inside a scan leaves stacked, so it needs an int axis. Give it one with "
                "`nnx.StateAxes({nnx.Intermediate: 0, ...: nnx.Carry})` (or the Variable's type) "
                "in in_axes / out_axes, or create it before the scan."
            )
        roles[path] = ("ys", axis)
    return roles


def _output_roles(exit_static: boundary.ExitStatic, out_flat: list[object]) -> tuple[Role, ...]:
    """What each output array becomes: ('carry', slot) or ('ys', axis)."""
    positions = set(exit_static.out_positions)
    roles: list[Role] = []
    carry_count = 0
    for a in (a for i, a in enumerate(out_flat) if i not in positions):
        if a is Carry:
            roles.append(("carry", carry_count))
            carry_count += 1
        elif _is_int(a):
            roles.append(("ys", a))
        else:
            raise ValueError(f"nnx.scan: out_axes entry {a!r} is not supported; use nnx.Carry or an int.")
    return tuple(roles)


def _check_carried_outputs(exit_static: boundary.ExitStatic, node_out_axes: list) -> None:
    """A Module/Variable returned in the Carry position must be the carried input."""
    if exit_static.graphdef is None:
        return
    root = exit_static.graphdef.root
    outs = root.children[1][1].children if len(root.children) > 1 else ()
    from nnxfn.core.graphdef import Ref

    for (k, d), axis in zip(outs, node_out_axes):
        if axis is Carry and not isinstance(d, Ref):
            raise ValueError(
                "nnx.scan: Carry references must be the same between iterations: the carry "
                f"output {errors.path_str((k,), 'out')} is a new {d.type.__name__}, not the "
                "carried input (scan Variable identity must be preserved across iterations). "
                "Update the carried object in place (`v[...] = new`, `m.x[...] = ...`) and "
                "return it."
            )


def _is_int(axis: object) -> tp.TypeGuard[int]:
    return isinstance(axis, int) and not isinstance(axis, bool)


def _axis_key(axis: tp.Any) -> tp.Any:
    return "carry" if axis is Carry else axis


def _check_in_axis(axis: object, path: Path) -> None:
    if axis is not None and axis is not Carry and not _is_int(axis):
        raise ValueError(
            f"nnx.scan: in_axes gives {errors.path_str(path[1:], 'arg')} the axis {axis!r}; "
            "use an int, None (broadcast) or nnx.Carry."
        )


def _validate_axes(in_axes: object, out_axes: object) -> None:
    """Flax's rules: one top-level Carry in each of in_axes/out_axes, or in neither;
    no None (broadcast) in out_axes."""
    is_leaf = lambda x: x is None or x is Carry or isinstance(x, StateAxes)  # noqa: E731

    def carries(axes: object, name: str) -> int:
        count = 0
        for path, leaf in jax.tree_util.tree_leaves_with_path(axes, is_leaf=is_leaf):
            if leaf is Carry:
                count += 1
                if len(path) > 1:
                    raise ValueError(
                        f"nnx.scan: Carry must be a top-level entry of {name}, it cannot be "
                        f"nested; found it at {name}{jax.tree_util.keystr(path)}."
                    )
        if count > 1:
            raise ValueError(
                f"nnx.scan: Found multiple Carry definitions in {name}; mark exactly one "
                "argument (and one output) as nnx.Carry, e.g. put several values in a tuple."
            )
        return count

    if (carries(in_axes, "in_axes") > 0) != (carries(out_axes, "out_axes") > 0):
        raise ValueError(
            "nnx.scan: If one of in_axes or out_axes has Carry, the other must also have "
            f"Carry. Got in_axes={in_axes!r}, out_axes={out_axes!r}."
        )
    for path, leaf in jax.tree_util.tree_leaves_with_path(out_axes, is_leaf=is_leaf):
        where = f"out_axes{jax.tree_util.keystr(path)}"
        if leaf is None:
            raise ValueError(
                f"nnx.scan: Cannot broadcast output state: got None at {where}. Scan outputs "
                "are either carried (nnx.Carry) or stacked (an int axis)."
            )
        if isinstance(leaf, StateAxes):
            for f, value in leaf.mapping:
                if value is None:
                    raise ValueError(
                        f"nnx.scan: Cannot broadcast output state. Got StateAxes({{{f!r}: None}}) "
                        f"at {where}; use an int axis or nnx.Carry."
                    )


@lifted(Rules("scan", prefixes=("in_axes", "out_axes"), carry=True))
def scan(
    f: tp.Callable | None = None,
    *,
    length: int | None = None,
    reverse: bool = False,
    unroll: int | bool = 1,
    _split_transpose: bool = False,
    in_axes: tp.Any = (Carry, 0),
    out_axes: tp.Any = (Carry, 0),
    transform_metadata: tp.Mapping | None = None,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> tp.Any:
    """Like `jax.lax.scan` with Flax NNX's `in_axes`/`out_axes` (see module docstring).

    `transform_metadata={nnx.PARTITION_NAME: 'layers'}`: scanned Variables'
    sharding annotations lose that axis inside the body (see `transforms/spmd.py`).
    With `graph=False`/`graph_updates=False` (Flax's tree mode; see
    `transforms/treemode.py`) only Variable values written inside are committed,
    and Flax's tree-mode errors apply;
    `_split_transpose` is passed to `jax.lax.scan`."""
    if f is None:
        return lambda fn: _Scanned(
            fn, in_axes, out_axes, length, reverse, unroll, transform_metadata, _split_transpose
        )
    return _Scanned(f, in_axes, out_axes, length, reverse, unroll, transform_metadata, _split_transpose)
