"""The public graph functions, with Flax NNX's signatures: the only `split`,
`merge`, `state`, `graphdef`, `clone` (`nnx.split is nnxfn.core.split`).

Built on `graph.py` (graph mode's split/merge of a node with children) and
`treegraph.py` (tree mode's GraphDef). They accept Flax's keywords (`graph=`,
`graph_updates=`, which select no result: nnxfn has one behaviour; with
`graph=False` what Flax's tree mode rejects raises, see `treemode.py`), handle
roots that are leaves (`nnx.split(variable)` gives the Variable as its
state, `nnx.split(array)` the array), accept every state form Flax's
functions accept (State, nested dicts, FlatState, GraphState, a list of
leaves), and add `unpack`/`GraphState`, `map`, `as_pure`. `update`/`pop`
(`writes.py`) and `iter_graph`/`find_duplicates`/`recursive_map`
(`traverse.py`) are re-exported from here.

>>> import jax.numpy as jnp
>>> graphdef, state = split(jnp.ones(2))
>>> merge(graphdef, state) is state
True
"""

from __future__ import annotations

import typing as tp
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from nnxfn.core import errors, filters as filterlib, treegraph, treemode
from nnxfn.core.flatstate import FlatState
from nnxfn.core.graph import (
    flatten_graph,
    merge_graph,
    nest_state,
    split_graph,
    state_of_graph,
    unflatten_graph,
)
from nnxfn.core.graphdef import GraphDef
from nnxfn.core.program import leaf_ops
from nnxfn.core.pytrees import is_pytree_node
from nnxfn.core.registry import lookup
from nnxfn.core.state import State, partition
from nnxfn.core.traverse import (
    find_duplicates as find_duplicates,
    iter_graph as iter_graph,
    recursive_map as recursive_map,
)
from nnxfn.core.variable_like import VariableLike
from nnxfn.core.writes import (
    graph_pop as graph_pop,
    pop as pop,
    set_child_at,
    target_at,
    to_state,
    update as update,
)

Path = tuple[tp.Hashable, ...]


def is_graph_node(x: object) -> bool:
    """True for registered graph nodes (Modules, nnx.List/Dict, ...) and Variables."""
    return lookup(type(x)) is not None or isinstance(x, VariableLike)


def is_leaf_root(x: object) -> bool:
    """True if `x` has no children at all: a Variable, an array or a static value."""
    return lookup(type(x)) is None and not is_pytree_node(x)


# -- split / merge / state / graphdef ----------------------------------------------
def split(
    node: object, *filters: filterlib.Filter, graph: bool | None = None, graph_updates: bool | None = None
) -> tuple[tp.Any, ...]:
    """`graphdef, state = nnx.split(node)` or one state per filter.

    A root that is itself a leaf (a Variable, an array) gives that leaf as
    its state, as in Flax. In tree mode (`graph=False`) the GraphDef is
    Flax's tree-mode record (`TreeNodeDef` + `VariableDef`s, see `treegraph.py`)."""
    treemode.check_node(node, "split", graph)
    if treemode.is_tree_mode(graph):
        return _split_tree(node, filters)
    if is_leaf_root(node):
        return _split_leaf(node, filters)
    return split_graph(node, *filters)


def _split_tree(node: object, filters: tuple) -> tuple[object, ...]:
    graphdef, pairs = treegraph.flatten_tree_mode(node)
    if is_leaf_root(node):  # the leaf itself (Flax's tree mode)
        return _leaf_states(graphdef, pairs[0][1] if pairs else node, bool(pairs), filters)
    paths = [path for path, _ in pairs]
    leaves = [leaf for _, leaf in pairs]
    if not filters:
        return graphdef, nest_state(paths, leaves)
    buckets = partition(paths, leaves, filters, exhaustive=True)
    return (graphdef, *(nest_state([paths[i] for i in b], [leaves[i] for i in b]) for b in buckets))


def _split_leaf(node: object, filters: tuple) -> tuple[object, ...]:
    graphdef, pairs = flatten_graph(node)
    return _leaf_states(graphdef, pairs[0][1] if pairs else node, bool(pairs), filters)


def _leaf_states(graphdef: GraphDef, leaf: object, is_leaf: bool, filters: tuple) -> tuple[object, ...]:
    """(graphdef, the leaf) or, with filters, the leaf in the State of the
    first filter it matches and empty States for the others."""
    if not filters:
        return graphdef, leaf
    out: list[object] = [State({}) for _ in filters]
    for i, pred in enumerate(filterlib.check_filters(filters)):
        if pred((), leaf):
            out[i] = leaf
            break
    else:
        if is_leaf:
            raise ValueError(errors.non_exhaustive_split([()]))
    return (graphdef, *out)


def merge(
    graphdef: object,
    /,
    *states: object,
    copy: bool = False,
    recreate_variables: bool = True,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> tp.Any:
    """Build a new object graph from a GraphDef and its states (or from GraphStates)."""
    if type(graphdef) is GraphState:
        graphdef, states = _unwrap_graph_states(graphdef, states)
    elif not isinstance(graphdef, GraphDef):
        raise TypeError(f"merge: expected a GraphDef or GraphState, got {graphdef!r}")
    if not states:
        raise TypeError("merge() missing 1 required positional argument: 'state'")
    if isinstance(graphdef, treegraph.TreeGraphDef):
        return _merge_tree(graphdef, states, copy)
    if type(states[0]) is State and all(type(s) is State for s in states):
        return merge_graph(graphdef, *states, copy=copy)
    leaf = _root_leaf(states)
    if leaf is not None:
        value = leaf[0]
        if copy and isinstance(value, VariableLike):
            value = type(value).from_parts(value.raw_value, value.metadata_items())
        return value
    if len(states) == 1 and type(states[0]) is list:
        paths = leaf_paths(graphdef)
        if len(paths) != len(states[0]):
            raise ValueError(
                f"merge: Incorrect number of leaves, the GraphDef has {len(paths)} "
                f"and the list holds {len(states[0])}."
            )
        return unflatten_graph(graphdef, dict(zip(paths, states[0])), copy=copy, adopt=True)
    flat: dict[Path, object] = {}
    for s in states:
        flat.update(s if isinstance(s, FlatState) else to_state(s).flat_state())
    return unflatten_graph(graphdef, flat, copy=copy, adopt=True)


def _merge_tree(graphdef: tp.Any, states: tuple, copy: bool) -> tp.Any:
    """`merge` of a tree-mode GraphDef: its leaves in sorted path order."""
    leaf = _root_leaf(states)
    if leaf is not None:
        leaves = [leaf[0]]
    elif len(states) == 1 and type(states[0]) is list:
        leaves = states[0]
    else:
        flat: dict[Path, object] = {}
        for s in states:
            flat.update(s if isinstance(s, FlatState) else to_state(s).flat_state())
        leaves = treegraph.leaves_by_path(graphdef, flat)
    return treegraph.unflatten_tree_mode(graphdef, leaves, copy=copy)


def _unwrap_graph_states(first: GraphState, rest: tuple) -> tuple[GraphDef, tuple]:
    for s in rest:
        if type(s) is not GraphState:
            raise ValueError(f"merge: Expected GraphState object, got {type(s).__name__}")
        if s._graphdef != first._graphdef:
            raise ValueError(
                "merge: the GraphDef must be the same for all GraphState objects; "
                "pass the GraphStates of one `nnx.unpack`."
            )
    return first._graphdef, (first._state, *(s._state for s in rest))


def _root_leaf(states: tuple) -> tuple[object] | None:
    """(leaf,) if the states are those of a leaf root (see `split`), else None."""
    leaves = [s for s in states if not isinstance(s, (Mapping, FlatState, list))]
    if not leaves:
        return None
    if len(leaves) > 1 or any(len(s) for s in states if isinstance(s, Mapping)):
        raise ValueError(
            "merge: got several non-mapping states; a Variable or array is the whole "
            "state only of a graph whose root is that leaf."
        )
    return (leaves[0],)


def leaf_paths(graphdef: GraphDef) -> list[Path]:
    """The paths of the GraphDef's leaves, in its leaf order."""
    return [path for path, _ in leaf_ops(graphdef)]


def state(
    node: object, *filters: filterlib.Filter, graph: bool | None = None, graph_updates: bool | None = None
) -> tp.Any:
    """The node's State, or one State per filter."""
    treemode.check_node(node, "state", graph)
    if is_leaf_root(node):
        _, *states = _split_leaf(node, filters)
        if not filters:
            return states[0]
        return states[0] if len(states) == 1 else tuple(states)
    return state_of_graph(node, *filters)


def graphdef(node: object, /, *, graph: bool | None = None, graph_updates: bool | None = None) -> GraphDef:
    """The GraphDef of `node` (what `split` returns first)."""
    treemode.check_node(node, "graphdef", graph)
    if treemode.is_tree_mode(graph):
        return treegraph.flatten_tree_mode(node)[0]
    return flatten_graph(node)[0]


def clone(
    node: object,
    variables: bool = True,
    *,
    arrays: bool = False,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> tp.Any:
    """A deep copy: new objects, same values and sharing.

    `variables=False` shares the Variable objects with `node`; `arrays=True`
    also copies the array buffers (so the clone can be donated)."""
    if arrays and not variables:
        raise ValueError("clone: If arrays is True, variables should be also True.")
    treemode.check_node(node, "clone", graph)
    if not variables:
        gd, pairs = flatten_graph(node, copy=False)
        if not pairs or pairs[0][0] != ():
            return unflatten_graph(gd, dict(pairs), copy=False)
        return pairs[0][1]
    gd, st = split(node, graph=graph)
    if arrays:
        st = jax.tree.map(jnp.copy, st)
    return merge(gd, st, copy=True)


# -- map / as_pure -------------------------------------------------------------------
def map(
    f: tp.Callable[[Path, tp.Any], tp.Any],
    node: object,
    /,
    *,  # noqa: A001
    graph: bool | None = None,
    graph_updates: bool | None = None,
    recreate_variables: bool = True,
) -> tp.Any:
    """A new graph like `node` whose leaves are `f(path, leaf)`.

    `f` receives the live leaves (Variables or arrays), as in Flax: writing
    into a Variable inside `f` writes into `node`. A Variable that `f` returns
    is placed in the new graph as it is (any Variable type); a raw value is
    boxed in a new Variable of the original type, or placed raw with
    `recreate_variables=False`.
    """
    treemode.check_node(node, "map", graph)
    gd, pairs = flatten_graph(node, copy=False)
    if pairs and pairs[0][0] == ():
        return f((), pairs[0][1])  # a leaf root: the result is the new node
    leaves: dict[Path, object] = {}
    patches: list[tuple[Path, object]] = []
    for path, old in pairs:
        new = f(path, old)
        if not isinstance(old, VariableLike):
            leaves[path] = new
        elif isinstance(new, VariableLike):
            leaves[path] = new
            if not isinstance(new, type(old)):  # a different Variable type: placed after
                leaves[path] = type(old).from_parts(new.raw_value, old.metadata_items())
                patches.append((path, new))
        elif recreate_variables:
            leaves[path] = type(old).from_parts(new, old.metadata_items())
        else:
            leaves[path] = type(old).from_parts(new, old.metadata_items())
            patches.append((path, new))
    out = unflatten_graph(gd, leaves, copy=False)
    for path, value in patches:
        _set_at(out, path, value)
    return out


def _set_at(root: object, path: Path, value: object) -> None:
    parent = target_at(root, path[:-1])
    if lookup(type(parent)) is None and type(parent) not in (list, dict):
        raise ValueError(
            f"map: cannot place the new value at {errors.path_str(path)}: its parent is a "
            f"{type(parent).__name__}, which cannot change in place. Return a Variable of "
            "the same type there, or keep recreate_variables=True."
        )
    set_child_at(parent, path[-1], value)


def as_pure(tree: object) -> tp.Any:
    """`tree` with every Variable replaced by its raw value."""
    return jax.tree.map(
        lambda x: as_pure(x.raw_value) if isinstance(x, VariableLike) else x,
        tree,
        is_leaf=lambda x: isinstance(x, VariableLike),
    )


pure = as_pure


# -- GraphState / unpack -----------------------------------------------------------------
class GraphState(tp.MutableMapping):
    """A State together with its GraphDef: `nnx.merge(graph_state)` rebuilds the node.

    The State inside stays immutable; setting or deleting a key here swaps in
    a new State."""

    __slots__ = ("_graphdef", "_state")

    def __init__(self, graphdef: GraphDef, state: State):
        if not isinstance(state, State):
            raise ValueError(f"GraphState: expected a State, got {type(state).__name__}")
        object.__setattr__(self, "_graphdef", graphdef)
        object.__setattr__(self, "_state", state)

    def __getattr__(self, name: str) -> tp.Any:
        if name.startswith("__") or name in ("_graphdef", "_state"):
            raise AttributeError(name)
        return getattr(self._state, name)

    def __setattr__(self, name: str, value: object) -> None:
        if name in ("_graphdef", "_state"):
            object.__setattr__(self, name, value)
        else:
            self[name] = value

    def __getitem__(self, key: object) -> tp.Any:
        return self._state[key]

    def __setitem__(self, key: object, value: object) -> None:
        mapping = dict(self._state._mapping)
        mapping[key] = value
        object.__setattr__(self, "_state", State(mapping))

    def __delitem__(self, key: object) -> None:
        mapping = dict(self._state._mapping)
        del mapping[key]
        object.__setattr__(self, "_state", State(mapping))

    def __iter__(self) -> tp.Iterator:
        return iter(self._state)

    def __len__(self) -> int:
        return len(self._state)

    def __contains__(self, key: object) -> bool:
        return key in self._state

    def __repr__(self) -> str:
        return f"GraphState({self._graphdef!r}, {self._state!r})"


class _GraphStateAux(tp.NamedTuple):
    graphdef: GraphDef
    treedef: jax.tree_util.PyTreeDef  # one level of the State


def _one_level(state: State) -> tuple[list[tuple[jax.tree_util.KeyPath, object]], jax.tree_util.PyTreeDef]:
    return jax.tree_util.tree_flatten_with_path(state, is_leaf=lambda y: y is not state)


def _gs_flatten_with_keys(
    x: GraphState,
) -> tuple[list[tuple[jax.tree_util.KeyEntry, object]], _GraphStateAux]:
    pairs, treedef = _one_level(x._state)
    return [(path[0], child) for path, child in pairs], _GraphStateAux(x._graphdef, treedef)


def _gs_flatten(x: GraphState) -> tuple[list[object], _GraphStateAux]:
    children, treedef = jax.tree_util.tree_flatten(x._state, is_leaf=lambda y: y is not x._state)
    return children, _GraphStateAux(x._graphdef, treedef)


def _gs_unflatten(aux: _GraphStateAux, children: tp.Iterable[object]) -> GraphState:
    return GraphState(aux.graphdef, aux.treedef.unflatten(children))


jax.tree_util.register_pytree_with_keys(GraphState, _gs_flatten_with_keys, _gs_unflatten, _gs_flatten)


def unpack(
    node: object, *filters: filterlib.Filter, graph: bool | None = None, graph_updates: bool | None = None
) -> GraphState | tuple[GraphState, ...]:
    """Like `split`, but each State carries the GraphDef (`nnx.merge(*graph_states)`)."""
    treemode.check_node(node, "unpack", graph)
    gd, *states = split(node, *filters)
    states = [s if isinstance(s, State) else State({(): s}) for s in states]
    if len(states) == 1:
        return GraphState(gd, states[0])
    return tuple(GraphState(gd, s) for s in states)


PureState = tuple  # `tuple[GraphDef[Node], State]`; subscriptable as in Flax
