"""Per-leaf axes for vmap/pmap/scan/shard_map: `StateAxes` and prefix resolution."""

from __future__ import annotations

import typing as tp
from collections.abc import Mapping

import jax
from jax.api_util import flatten_axes
from jax.sharding import PartitionSpec

from nnxfn import core
from nnxfn.core.graphdef import GraphDef, Ref, VariableDef
from nnxfn.core.trees import TreeState
from nnxfn.core.variable_like import VariableLike
from nnxfn.transforms.boundary import EntryRecord, ExitStatic, Path, is_graph_object, raw
from nnxfn.transforms.common import FilterMap


class StateAxes(FilterMap, Mapping):  # type: ignore[misc]  # keys/values/items are tuples, as Flax's
    """Per-filter axes for a module argument: `StateAxes({nnx.Param: 0, ...: None})`.
    A read-only Mapping from filters to axes, as in Flax (`get`, `in`)."""

    def resolve(self, path: tuple, leaf: object) -> tp.Any:
        axis = self.lookup(path, leaf, default=_UNMATCHED)
        if axis is _UNMATCHED:
            raise ValueError(
                f"StateAxes{dict(self.mapping)!r}: no filter matches the leaf at "
                f"{core.errors.path_str(path)}. Add `...: None` (or an axis) as the last entry."
            )
        return axis

    def map_prefix(self, path: tuple, variable: object) -> tp.Any:
        """Flax's name for `resolve`: the axis of the leaf at `path`."""
        return self.resolve(path, variable)

    @property
    def axes(self) -> tuple:
        return self.values()


_UNMATCHED = object()


class PathAxes(StateAxes):
    """Per-leaf specs looked up by path in a Module/State of specs (`P()` if absent)."""

    def __init__(self, tree: object):
        source = tree if isinstance(tree, core.State) else core.state(tree)
        self.mapping = ()
        self._flat = {p: getattr(v, "raw_value", v) for p, v in source.flat_state()}

    def resolve(self, path: tuple, leaf: object) -> tp.Any:
        found = self._flat.get(path)
        return PartitionSpec() if found is None else found

    def __repr__(self) -> str:
        return f"PathAxes({len(self._flat)} leaves)"


def is_spec_tree(x: object) -> bool:
    """A Module or State whose leaves are specs or shardings (e.g.
    `nnx.get_partition_spec(model)`), not a Variable."""
    return isinstance(x, core.State) or (is_graph_object(x) and not isinstance(x, VariableLike))


class NodePrefix:
    """An axes prefix shaped like a graph object (what `nnx.prefix(model, ...)`
    returns): each leaf's axis is the value at the same path."""

    def __init__(self, node: object):
        self.fn = None
        if isinstance(node, TreeState):  # the graph-mode form: a State-shaped tree
            state = node.state
            pairs = state.flat_state() if isinstance(state, core.State) else [((), state)]
            self.is_ref = not pairs or (isinstance(state, core.State) and not len(state))
            self.fn = node.prefix_fn  # its prefix at paths the state leaves out
        else:
            pairs = core.flatten_graph(node)[1]
            self.is_ref = False
        self.axes = {path: raw(leaf) for path, leaf in pairs}

    def resolve(self, path: tuple, leaf: object) -> tp.Any:
        try:
            return self.axes[path]
        except KeyError:
            if self.fn is not None:
                return self.fn(path, leaf)
            if self.is_ref:
                raise _MissingPrefix(path) from None
            raise ValueError(
                f"the axes prefix (from `nnx.prefix`) has no value at "
                f"{core.errors.path_str(path)}; make it from the same object you pass."
            ) from None


class _MissingPrefix(ValueError):
    """A path absent from a reference's (empty) graph-form prefix."""


def wrap_node_prefixes(specs: object) -> tp.Any:
    """`specs` with every graph object in it (a node-shaped prefix) made a `NodePrefix`."""

    def is_prefix(s: object) -> bool:
        return is_graph_object(s) or isinstance(s, TreeState)

    return jax.tree.map(lambda s: NodePrefix(s) if is_prefix(s) else s, specs, is_leaf=is_prefix)


def resolve(spec: object, path: tuple, leaf: object) -> tp.Any:
    """The spec for one leaf: per-filter maps (`StateAxes`, `StateSharding`) and
    `nnx.prefix` trees are looked up."""
    return spec.resolve(path, leaf) if isinstance(spec, (FilterMap, NodePrefix)) else spec


def leaf_specs(
    name: str, specs: object, tree: tuple[tuple[object, ...], dict[str, object]], kwargs_spec: object = 0
) -> list[object]:
    """One spec per leaf of `(args, kwargs)` (graph objects as leaves)."""
    args, kwargs = tree
    _, treedef = jax.tree_util.tree_flatten(args, is_leaf=is_graph_object)
    if not isinstance(specs, (tuple, list)):
        specs = (specs,) * len(args)
    if len(specs) != len(args):
        raise ValueError(
            f"{name}: in_axes has {len(specs)} entries but the function got "
            f"{len(args)} positional arguments; give one entry per argument."
        )
    flat = flatten_axes(f"{name} in_axes", treedef, wrap_node_prefixes(tuple(specs)))
    n_kw = len(jax.tree_util.tree_leaves(kwargs, is_leaf=is_graph_object))
    return list(flat) + [kwargs_spec] * n_kw


def entry_axes(entry: EntryRecord, specs: list) -> tuple[list, list]:
    """Axes of an EntryRecord's state leaves and other leaves."""
    node_spec = [specs[p] for p in entry.static.node_positions]
    state = [
        resolve(node_spec[path[0]], path[1:], leaf) for path, leaf in zip(entry.static.paths, entry.live)
    ]
    fixed = set(entry.static.node_positions) | {p for p, _ in entry.static.static_leaves}
    others = [specs[i] for i in range(len(specs)) if i not in fixed]
    return state, others


def exit_axes(
    name: str,
    exit: ExitStatic,
    entry: EntryRecord,
    entry_state_axes: list,
    in_specs: list,
    out_specs: object,
    emitted_leaves: list,
) -> tuple[list, list]:
    """Axes for (out arrays, emitted state values) of one exit."""
    out_flat = flatten_axes(f"{name} out_axes", exit.out_treedef, wrap_node_prefixes(out_specs))
    out_arrays = [a for i, a in enumerate(out_flat) if i not in exit.out_positions]
    node_spec = [in_specs[p] for p in entry.static.node_positions]
    out_node_spec = [out_flat[p] for p in exit.out_positions]
    changed = exit.changed or ()  # None: structure changed, every leaf at its path
    if exit.graphdef is None:
        emitted = [entry_state_axes[i] for i in changed]
    else:
        emitted = []
        for j, (path, leaf) in enumerate(zip(exit.paths, emitted_leaves)):
            if j < len(changed):
                emitted.append(entry_state_axes[changed[j]])
            elif path[0] == 0:
                emitted.append(resolve(node_spec[path[1]], path[2:], leaf))
            else:
                emitted.append(resolve(out_node_spec[path[1]], path[2:], leaf))
    return out_arrays, emitted


def variable_type(d: VariableDef) -> type[VariableLike]:
    """The Variable class a VariableDef describes."""
    return tp.cast("type[VariableLike]", d.type)


def variable_templates(graphdef: GraphDef) -> dict[Path, VariableLike]:
    """A value-less Variable of the right type and metadata at the path of every
    Variable leaf of `graphdef`: what filters are resolved against (by type or
    metadata) where only the structure is known."""
    found: dict[Path, VariableLike] = {}
    stack: list[tuple[tp.Any, Path]] = [(graphdef.root, ())]
    while stack:
        d, path = stack.pop()
        if isinstance(d, VariableDef):
            found[path] = variable_type(d).from_parts(None, d.metadata)
        stack.extend((child, path + (k,)) for k, child in getattr(d, "children", ()))
    return found


def emitted_templates(exit: ExitStatic) -> list[VariableLike | None]:
    """`variable_templates` of an exit's GraphDef, one per emitted leaf (None: not a Variable)."""
    if exit.graphdef is None:
        return []
    found = variable_templates(exit.graphdef)
    return [found.get(p) for p in exit.paths]


def _has_refs(entry: EntryRecord) -> bool:
    """Whether some object is reachable twice in the arguments (cached per structure)."""
    found = entry.static.__dict__.get("_has_refs")
    if found is None:

        def walk(d: object) -> bool:
            if isinstance(d, Ref):
                return True
            return any(walk(c) for _, c in getattr(d, "children", ()))

        found = walk(entry.static.graphdef.root)
        object.__setattr__(entry.static, "_has_refs", found)
    return found


def check_shared_leaf_specs(name: str, entry: EntryRecord, specs: list, what: str) -> None:
    """Raise if an object reachable from two arguments is given two different
    specs (axes, shardings) by them: it has one value, so only one can apply."""
    node_specs = [specs[p] for p in entry.static.node_positions]
    if len(node_specs) < 2 or not _has_refs(entry):
        return
    first = node_specs[0]
    if all(s is first or (type(s) in (int, type(None)) and s == first) for s in node_specs):
        return
    seen: dict[int, tuple[tp.Any, int, tuple]] = {}
    for k, (node, spec) in enumerate(zip(entry.nodes, node_specs)):
        _, pairs = core.flatten_graph(node, copy=False)
        for path, leaf in pairs:
            try:
                value = resolve(spec, path, leaf)
            except _MissingPrefix:
                continue  # a reference in a graph-form `nnx.prefix`: its first path has the axes
            prev = seen.setdefault(id(leaf), (value, k, path))
            if prev[0] is not value and prev[0] != value:
                a = core.errors.path_str(prev[2], f"(object argument {prev[1]})")
                b = core.errors.path_str(path, f"(object argument {k})")
                raise ValueError(
                    f"{name}: Inconsistent aliasing detected. The following nodes have different "
                    f"prefixes ({what}):\nNode: {type(leaf).__name__}\n"
                    f"  {a}: {prev[0]!r}\n  {b}: {value!r}\n"
                    f"Duplicate {type(leaf).__name__}: it is one object reached by two paths and has "
                    f"one value, so give every path to it the same {what}."
                )


def is_tree_prefix(node: object) -> bool:
    """Whether a graph object is an axes prefix (what `nnx.prefix(obj, ...,
    graph=False)` returns: a copy whose Variables hold axes, not arrays)."""
    import numpy as np

    leaves = [raw(leaf) for _, leaf in core.flatten_graph(node, copy=False)[1]]
    return bool(leaves) and not any(isinstance(v, (jax.Array, np.ndarray)) for v in leaves)


def check_axes_not_objects(name: str, axes: object, what: str) -> None:
    """Axes specs are ints, None, `StateAxes` (or `nnx.prefix` results): not
    Modules or Variables."""
    for leaf in jax.tree_util.tree_leaves(axes, is_leaf=is_graph_object):
        if isinstance(leaf, VariableLike):
            raise ValueError(
                f"{name}: Variables prefixes are not supported: {what} holds a "
                f"{type(leaf).__name__}. Give its axis (an int or None) instead."
            )
        if is_graph_object(leaf) and not is_tree_prefix(leaf):
            raise ValueError(
                f"{name}: Graph nodes are not allowed as prefixes: {what} holds a "
                f"{type(leaf).__name__}. Give one axis for the whole object, or per-leaf axes "
                "with `nnx.StateAxes({filter: axis})` or `nnx.prefix(obj, {filter: axis})`."
            )
