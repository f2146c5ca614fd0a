"""Flax's `nnx.extract` helpers: turn the graph nodes inside a pytree into pure
`NodeStates` (GraphDef + States) and back, sharing identity across the tree.

>>> # pure = to_tree((m, 1, {"b": m})); from_tree(pure)[0] is from_tree(pure)[2]["b"]
"""

from __future__ import annotations

import dataclasses
import typing as tp

import jax

from nnxfn.core import filters as filterlib, traverse as _traverse
from nnxfn.core import api
from nnxfn.core.api import is_graph_node
from nnxfn.core.contexts import (
    MergeContext,
    RefMap,
    SplitContext,
    flatten,
    merge_context,
    split_context,
)
from nnxfn.core.flatstate import FlatState
from nnxfn.core.graphdef import GraphDef
from nnxfn.core.pytrees import jax_to_nnx_path
from nnxfn.core.state import State
from nnxfn.core.variable_like import VariableLike

Path = tuple[tp.Hashable, ...]


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING = _Missing()


@dataclasses.dataclass(frozen=True)
class NodeStates:
    """A graph node as pure data: its GraphDef and one or more States (a pytree).

    With `graphdef=None` it is a prefix (e.g. axes for `jax.vmap`) for the
    NodeStates of the same shape."""

    _graphdef: GraphDef | None
    states: tuple[tp.Any, ...]
    metadata: object = None

    @property
    def graphdef(self) -> GraphDef:
        if self._graphdef is None:
            raise ValueError("NodeStates: No graphdef available (this is a prefix).")
        return self._graphdef

    @property
    def state(self) -> tp.Any:
        if len(self.states) != 1:
            raise ValueError(f"NodeStates: expected exactly one state, got {len(self.states)}")
        return self.states[0]

    def replace(self, **fields: tp.Any) -> NodeStates:
        """A copy with some fields changed (`graphdef=`, `states=`, `metadata=`)."""
        if "graphdef" in fields:
            fields["_graphdef"] = fields.pop("graphdef")
        return dataclasses.replace(self, **fields)

    @classmethod
    def from_split(
        cls, graphdef: GraphDef | None, state: object, /, *states: object, metadata: object = None
    ) -> NodeStates:
        return cls(graphdef, (state, *states), metadata)

    @classmethod
    def from_states(cls, state: object, *states: object) -> NodeStates:
        return cls(None, (state, *states), None)

    @classmethod
    def from_prefixes(cls, prefixes: tp.Iterable[tp.Any], /, *, metadata: object = None) -> NodeStates:
        return cls(None, tuple(prefixes), metadata)


jax.tree_util.register_dataclass(NodeStates, data_fields=["_graphdef", "states"], meta_fields=["metadata"])


def _is_node(x: object) -> bool:
    return is_graph_node(x)


def default_split_fn(ctx: SplitContext, path: Path, prefix: object, leaf: object) -> NodeStates:
    return NodeStates.from_split(*ctx.split(leaf))


def broadcast_prefix(
    prefix_tree: object,
    full_tree: object,
    prefix_is_leaf: tp.Callable[[tp.Any], bool] | None = None,
    tree_is_leaf: tp.Callable[[tp.Any], bool] | None = None,
) -> list[tp.Any]:
    """The prefix value of every leaf of `full_tree` (graph nodes are leaves)."""
    out: list[object] = []

    def count(subtree: object) -> int:
        return len(jax.tree_util.tree_leaves(subtree, is_leaf=tree_is_leaf))

    jax.tree.map(
        lambda p, sub: out.extend([p] * count(sub)),
        prefix_tree,
        full_tree,
        is_leaf=lambda x: _is_node(x) or (prefix_is_leaf is not None and prefix_is_leaf(x)),
    )
    return out


def check_consistent_aliasing(
    node: object, prefix: object, /, *, node_prefixes: dict[int, list[tuple[Path, object]]] | None = None
) -> None:
    """Raise if a Variable reachable from several places gets different prefixes."""
    if node_prefixes is None:
        node_prefixes = {}
    names: dict[int, str] = {}
    for path, value in _traverse.iter_graph(node):
        if isinstance(value, VariableLike):
            p = prefix.map_prefix(path, value) if hasattr(prefix, "map_prefix") else prefix
            node_prefixes.setdefault(id(value), []).append((path, p))
            names[id(value)] = type(value).__name__
    msgs = []
    for key, entries in node_prefixes.items():
        if len({_hashable(p) for _, p in entries}) > 1:
            lines = "\n".join(
                f"  {'/'.join(map(str, path)) if path else '<root>'}: {p}" for path, p in entries
            )
            msgs.append(f"Node: {names.get(key, key)}\n{lines}")
    if msgs:
        raise ValueError(
            "Inconsistent aliasing detected. The following nodes have different prefixes:\n" + "\n".join(msgs)
        )


def _hashable(x: object) -> object:
    try:
        hash(x)
    except TypeError:
        return id(x)
    return x


def to_tree(
    tree: object,
    /,
    *,
    prefix: object = MISSING,
    split_fn: tp.Callable[[SplitContext, Path, tp.Any, tp.Any], tp.Any] = default_split_fn,
    map_non_graph_nodes: bool = False,
    ctxtag: tp.Hashable | None = None,
    check_aliasing: bool = True,
) -> tp.Any:
    """`tree` with every graph node (and Variable) replaced by `split_fn(...)`,
    by default its `NodeStates`; all splits share one `split_context`, so a
    node met twice is a reference the second time."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_node)
    if prefix is MISSING or prefix is None:
        prefixes = [prefix] * len(leaves)
    else:
        prefixes = broadcast_prefix(prefix, tree, prefix_is_leaf=lambda x: x is None, tree_is_leaf=_is_node)
    node_prefixes: dict[int, list] = {}
    out = []
    with split_context(ctxtag) as ctx:
        for (keypath, leaf), leaf_prefix in zip(leaves, prefixes):
            if _is_node(leaf):
                if check_aliasing and prefixes and prefix is not MISSING and prefix is not None:
                    check_consistent_aliasing(leaf, leaf_prefix, node_prefixes=node_prefixes)
                out.append(split_fn(ctx, keypath, leaf_prefix, leaf))
            elif map_non_graph_nodes:
                out.append(split_fn(ctx, keypath, leaf_prefix, leaf))
            else:
                out.append(leaf)
    return jax.tree.unflatten(treedef, out)


def merge_tree_node(ctx: MergeContext, path: Path, prefix: object, leaf: object) -> tp.Any:
    if not isinstance(leaf, NodeStates):
        raise ValueError(f"from_tree: expected NodeStates, got {type(leaf).__name__} at {path}")
    return ctx.merge(leaf.graphdef, *leaf.states)


def is_tree_node(x: object) -> bool:
    return isinstance(x, NodeStates)


def from_tree(
    tree: object,
    /,
    *,
    prefix: object = MISSING,
    merge_fn: tp.Callable[[MergeContext, Path, tp.Any, tp.Any], tp.Any] = merge_tree_node,
    is_node_leaf: tp.Callable[[tp.Any], bool] = is_tree_node,
    is_leaf: tp.Callable[[tp.Any], bool] = is_tree_node,
    map_non_graph_nodes: bool = False,
    is_inner: bool | None = None,
    ctxtag: tp.Hashable | None = None,
) -> tp.Any:
    """The inverse of `to_tree`: every `NodeStates` merged back into an object,
    all in one `merge_context` (so references resolve to the same object)."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    if prefix is MISSING or prefix is None:
        prefixes = [prefix] * len(leaves)
    else:
        prefixes = broadcast_prefix(
            prefix, tree, prefix_is_leaf=lambda x: x is None or is_leaf(x), tree_is_leaf=is_leaf
        )
    out = []
    with merge_context(ctxtag, is_inner) as ctx:
        for (keypath, leaf), leaf_prefix in zip(leaves, prefixes):
            if map_non_graph_nodes or is_node_leaf(leaf) or isinstance(leaf, VariableLike):
                leaf = merge_fn(ctx, keypath, leaf_prefix, leaf)
            out.append(leaf)
    return jax.tree.unflatten(treedef, out)


def clear_non_graph_nodes(tree: object) -> tp.Any:
    """`tree` with every leaf that is not a graph node or Variable set to None."""
    return jax.tree.map(lambda x: x if _is_node(x) else None, tree, is_leaf=_is_node)


# -- prefix -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TreeState:
    """A graph node's GraphDef with a State-shaped tree (e.g. of prefixes)."""

    graphdef: GraphDef | None
    state: object
    # `(path, leaf) -> prefix` of the `nnx.prefix` call that made it (paths from the
    # root `nnx.prefix` was given): the prefix at paths the state leaves out, such as
    # a Variable already met in an earlier object. Not compared; lost by `jax.tree.map`.
    prefix_fn: tp.Callable[[Path, tp.Any], tp.Any] | None = dataclasses.field(
        default=None, init=False, compare=False, repr=False
    )

    def replace(self, **kwargs: tp.Any) -> TreeState:
        return dataclasses.replace(self, **kwargs)


jax.tree_util.register_dataclass(TreeState, data_fields=["state"], meta_fields=["graphdef"])


def _prefix_fn(filter_map: tp.Any) -> tp.Callable[[Path, tp.Any], tp.Any]:
    if not isinstance(filter_map, tp.Mapping):
        return filter_map
    preds = [(filterlib.to_predicate(f), v) for f, v in filter_map.items()]
    filters = list(filter_map)

    def fn(path: Path, leaf: object) -> tp.Any:
        for pred, value in preds:
            if pred(path, leaf):
                return value
        raise ValueError(
            f"prefix: No filter matched the leaf at {path!r} ({type(leaf).__name__}); "
            f"filters: {filters}. Add `...: value` as the last entry."
        )

    return fn


def prefix(
    node: object, filter_map: object, /, *, graph: bool | None = None, graph_updates: bool | None = None
) -> tp.Any:
    """Axes prefixes for `node`: every leaf (Variable, array) replaced by
    `filter_map(path, leaf)`, or by the value of the first matching filter of a
    `{filter: value}` mapping.

    As in Flax, the result is shaped for the transform that takes it: by
    default each graph node becomes a `TreeState` (its GraphDef and a
    State-shaped tree of prefixes; a node met twice is a reference with an
    empty state); with `graph=False` it is a copy of `node` whose Variables
    hold the prefixes, which `jax.vmap` also accepts. `nnx.vmap` and friends
    take either form.
    """
    fn = _prefix_fn(filter_map)
    if graph is False:
        return api.map(fn, node)
    ref_index = RefMap()

    def one(keypath: tuple, x: object) -> tp.Any:
        base = jax_to_nnx_path(keypath)
        if not _is_node(x):
            return fn(base, x)
        graphdef, flat = flatten(x, ref_index=ref_index, copy=False)
        assert isinstance(flat, FlatState)  # with_paths (the default)
        if len(flat) == 1 and flat.paths[0] == ():
            out = TreeState(graphdef, fn(base, flat.leaves[0]))
        else:
            out = TreeState(graphdef, State.from_flat_path([(p, fn(base + p, v)) for p, v in flat]))
        object.__setattr__(out, "prefix_fn", lambda p, leaf: fn(base + p, leaf))
        return out

    return jax.tree_util.tree_map_with_path(one, node, is_leaf=_is_node)


__all__ = [
    "NodeStates",
    "TreeState",
    "to_tree",
    "from_tree",
    "prefix",
    "clear_non_graph_nodes",
    "broadcast_prefix",
    "check_consistent_aliasing",
    "default_split_fn",
    "merge_tree_node",
    "is_tree_node",
]
