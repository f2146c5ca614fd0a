"""Sharding arguments of `nnx.jit` resolved per state leaf.

A module argument's entry in `in_shardings` (or a returned module's entry in
`out_shardings`) may be one sharding for all its leaves, a
`StateSharding({filter: sharding})`, or a tree of shardings shaped like the
module: a Module or State of shardings, as `nnx.get_named_sharding(model,
mesh)` returns (paths are looked up). For modules *returned* by the function
(e.g. a jitted constructor), the shardings are applied inside the trace, so
their arrays are created sharded and never materialised on one device.
"""

from __future__ import annotations

import typing as tp

import jax
from jax.api_util import flatten_axes
from jax.sharding import PartitionSpec, Sharding

from nnxfn import core
from nnxfn.core.trees import TreeState
from nnxfn.facade import spmd
from nnxfn.transforms.boundary import EntryRecord, ExitStatic
from nnxfn.transforms.axes import is_spec_tree, variable_templates
from nnxfn.transforms.common import FilterMap


class StateSharding(FilterMap):
    """Per-filter shardings for a module argument: `StateSharding({nnx.Param: s, ...: None})`
    (`resolve` gives None for a leaf no filter matches)."""

    @property
    def shardings(self) -> tuple:
        """The shardings, in the order of `filters`."""
        return self.values()


class PathSharding(StateSharding):
    """Shardings looked up by path: made from a Module or State of shardings."""

    def __init__(self, tree: object):
        source = tree if isinstance(tree, core.State) else core.state(tree)
        self.mapping = ()
        self._flat = {p: _unbox(s) for p, s in source.flat_state()}

    def resolve(self, path: tuple, leaf: object) -> tp.Any:
        return self._flat.get(path)

    def __repr__(self) -> str:
        return f"PathSharding({len(self._flat)} leaves)"


def _unbox(x: object) -> tp.Any:
    return x.raw_value if hasattr(x, "raw_value") else x


def normalize_sharding_spec(spec: object) -> tp.Any:
    """Module/State trees of shardings inside an in/out_shardings spec -> PathSharding
    (also `nnx.prefix(model, {...: sharding})` results, GraphDef + State of shardings)."""
    if isinstance(spec, TreeState):
        inner = spec.state
        return PathSharding(inner) if isinstance(inner, core.State) else inner
    if is_spec_tree(spec):
        return PathSharding(spec)
    if isinstance(spec, (tuple, list)) and not isinstance(spec, PartitionSpec):
        return type(spec)(normalize_sharding_spec(s) for s in spec)
    return spec


def spec_for_arg(spec: object, arg: int | str) -> tp.Any:
    if isinstance(spec, (tuple, list)):  # one entry per positional argument
        return spec[arg] if isinstance(arg, int) and 0 <= arg < len(spec) else None
    return spec


def resolve_in_shardings(
    spec: object,
    entry: EntryRecord,
    state_owner: list[int],
    other_owner: list[int],
    donated_idx: tuple[int, ...],
) -> tuple:
    """Shardings shaped like the jitted body's (kept, donated, others) arguments."""
    per_state = []
    for path, leaf, owner in zip(entry.static.paths, entry.live, state_owner):
        s = spec_for_arg(spec, owner) if spec is not None else None
        per_state.append(s.resolve(path[1:], leaf) if isinstance(s, StateSharding) else s)
    chosen = set(donated_idx)
    kept = [s for i, s in enumerate(per_state) if i not in chosen]
    donated = [per_state[i] for i in donated_idx]
    others = [spec_for_arg(spec, o) if spec is not None else None for o in other_owner]
    return (kept, donated, others)


def _simple(spec: object) -> bool:
    return spec is None or isinstance(spec, (Sharding, PartitionSpec))


def resolve_out_shardings(spec: object) -> tp.Any:
    """Shardings for (exit static, user outputs, emitted state): only user outputs,
    when `spec` is one sharding; structured specs are applied inside the trace."""
    return (None, spec, None) if spec is not None and _simple(spec) else None


class _Leaf:
    """Hides a spec entry from pytree flattening (PartitionSpec, StateSharding, ...)."""

    def __init__(self, value: object):
        self.value = value


def constrain_outputs(spec: object, exit: ExitStatic, out_arrays: list, emitted: list) -> tuple[list, list]:
    """Inside the jitted body: lay out the user outputs and the leaves of returned
    modules as `spec` says (modules that were arguments keep their own layout)."""
    if spec is None:
        return out_arrays, emitted
    n_out = exit.out_treedef.num_leaves
    if _simple(spec):
        per_leaf = [spec] * n_out
    else:
        wrapped = jax.tree_util.tree_map(
            _Leaf, spec, is_leaf=lambda x: isinstance(x, (Sharding, PartitionSpec, StateSharding))
        )
        per_leaf = [
            s.value if isinstance(s, _Leaf) else s
            for s in flatten_axes("nnx.jit out_shardings", exit.out_treedef, wrapped)
        ]
        positions = set(exit.out_positions)
        arrays = [s for i, s in enumerate(per_leaf) if i not in positions]
        out_arrays = [x if s is None else spmd.constrain(x, s) for x, s in zip(out_arrays, arrays)]
    if not exit.out_positions or exit.graphdef is None:
        return out_arrays, emitted
    node_specs = [per_leaf[i] for i in exit.out_positions]
    templates: dict | None = None
    emitted = list(emitted)
    for j, path in enumerate(exit.paths):
        if path[0] != 1:  # state of an argument
            continue
        s = node_specs[path[1]]
        if isinstance(s, StateSharding):
            if templates is None:
                templates = variable_templates(exit.graphdef)
            s = s.resolve(path[2:], templates.get(path))
        if s is not None:
            emitted[j] = spmd.constrain(emitted[j], s)
    return out_arrays, emitted


def constrain_updates(exit: ExitStatic, emitted: list, state_shardings: tuple) -> list:
    """Inside the jitted body: updated input state leaves keep their in_shardings
    (so the next call sees the same layout and reuses the compiled function)."""
    if exit.changed is None:  # structure changed: leaves are re-laid out by the compiler
        return emitted
    emitted = list(emitted)
    for j, i in enumerate(exit.changed):
        s = state_shardings[i]
        if s is not None and not isinstance(s, StateSharding):
            emitted[j] = spmd.constrain(emitted[j], s)
    return emitted


def place_state_leaves(entry: EntryRecord, shardings: tp.Sequence) -> None:
    """Put each concrete array state leaf of `entry` on its sharding in
    `shardings` (None: leave it), on the caller's Variables too (as Flax does),
    so the call sees them laid out as asked and they stay so after it."""
    for i, s in enumerate(shardings):
        value = entry.values[i]
        if (
            isinstance(s, Sharding)
            and isinstance(value, jax.Array)
            and not isinstance(value, jax.core.Tracer)
            and value.sharding != s
        ):
            value = entry.values[i] = jax.device_put(value, s)
            live = entry.live[i]
            if hasattr(live, "set_raw"):
                live.set_raw(value)
