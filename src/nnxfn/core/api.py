"""The public graph functions, with Flax NNX's signatures.

Thin layers over `graph.py`: they accept Flax's keywords (`graph=`,
`graph_updates=`, which select no result: nnxfn has one behaviour; with
`graph=False` what Flax's tree mode rejects raises, see `treemode.py`), handle
roots that are leaves (`nnx.split(variable)` gives the Variable as its
state, `nnx.split(array)` the array), accept every state form Flax's
functions accept (State, nested dicts, FlatState, GraphState, a list of
leaves), and add `unpack`/`GraphState`, `map`, `call`, `as_pure`,
`iter_children`.

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

from nnxfn.core import errors, filters as filterlib, graph as _graph, traverse as _traverse
from nnxfn.core import treegraph as _treegraph
from nnxfn.core import treemode as _treemode
from nnxfn.core import writes as _update
from nnxfn.core.flatstate import FlatState, ensure_state
from nnxfn.core.program import leaf_ops
from nnxfn.core.graphdef import GraphDef
from nnxfn.core.kinds import CONTAINERS, pytree_children
from nnxfn.core.registry import lookup
from nnxfn.core.state import State, partition
from nnxfn.core.state import state_children as _state_flatten
from nnxfn.core.state import state_children_with_keys as _state_flatten_with_keys
from nnxfn.core.variable_like import VariableLike

Path = tuple[tp.Any, ...]
_GRAPH_KW = ("graph", "graph_updates")


def is_graph_node(x: tp.Any) -> bool:
    """True for registered graph nodes (Modules, nnx.List/Dict, ...) and Variables."""
    return lookup(type(x)) is not None or isinstance(x, VariableLike)


def is_leaf_root(x: tp.Any) -> bool:
    """True if `x` has no children at all: a Variable, an array or a static value."""
    t = type(x)
    if lookup(t) is not None or t in CONTAINERS:
        return False
    if isinstance(x, VariableLike) or _graph.is_array(x):
        return True
    return pytree_children(x) is None


# -- split / merge / state / graphdef ----------------------------------------------
def split(
    node: tp.Any, *filters: filterlib.Filter, graph: bool | None = None, graph_updates: bool | None = None
) -> tuple[tp.Any, ...]:
    """`graphdef, state = nnx.split(node)` or one state per filter.

    A root that is itself a leaf (a Variable, an array) gives that leaf as
    its state, as in Flax. In tree mode (`graph=False`) the GraphDef is
    Flax's tree-mode record (`TreeNodeDef` + `VariableDef`s, see `treegraph.py`)."""
    _treemode.check_node(node, "split", graph)
    if _treemode.is_tree_mode(graph):
        return _split_tree(node, filters)
    if lookup(type(node)) is None and is_leaf_root(node):
        return _split_leaf(node, filters)
    return _graph.split(node, *filters)


def _split_tree(node: tp.Any, filters: tuple) -> tuple[tp.Any, ...]:
    graphdef, pairs = _treegraph.flatten_tree_mode(node)
    if lookup(type(node)) is None and is_leaf_root(node):  # the leaf itself (Flax's tree mode)
        return _leaf_states(graphdef, pairs[0][1] if pairs else node, bool(pairs), filters)
    paths = [path for path, _ in pairs]
    leaves = [leaf for _, leaf in pairs]
    if not filters:
        return graphdef, _graph._nest(paths, leaves)
    buckets = partition(paths, leaves, filters, exhaustive=True)
    return (graphdef, *(_graph._nest([paths[i] for i in b], [leaves[i] for i in b]) for b in buckets))


def _split_leaf(node: tp.Any, filters: tuple) -> tuple[tp.Any, ...]:
    graphdef, pairs = _graph.flatten(node)
    return _leaf_states(graphdef, pairs[0][1] if pairs else node, bool(pairs), filters)


def _leaf_states(graphdef: GraphDef, leaf: tp.Any, is_leaf: bool, filters: tuple) -> tuple[tp.Any, ...]:
    """(graphdef, the leaf) or, with filters, the leaf in the State of the
    first filter it matches and empty States for the others."""
    if not filters:
        return graphdef, leaf
    out: list[tp.Any] = [State({}) for _ in filters]
    for i, pred in enumerate(filterlib.check_filters(filters)):
        if pred((), leaf):
            out[i] = leaf
            break
    else:
        if is_leaf:
            raise ValueError(errors.non_exhaustive_split([()]))
    return (graphdef, *out)


def merge(
    graphdef: tp.Any,
    /,
    *states: tp.Any,
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
    if isinstance(graphdef, _treegraph.TreeGraphDef):
        return _merge_tree(graphdef, states, copy)
    if type(states[0]) is State and all(type(s) is State for s in states):
        return _graph.merge(graphdef, *states, copy=copy)
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
        return _graph.unflatten(graphdef, dict(zip(paths, states[0])), copy=copy, adopt=True)
    flat: dict[Path, tp.Any] = {}
    for s in states:
        flat.update(s if isinstance(s, FlatState) else _to_state(s).flat_state())
    return _graph.unflatten(graphdef, flat, copy=copy, adopt=True)


def _merge_tree(graphdef: tp.Any, states: tuple, copy: bool) -> tp.Any:
    """`merge` of a tree-mode GraphDef: its leaves in sorted path order."""
    leaf = _root_leaf(states)
    if leaf is not None:
        leaves = [leaf[0]]
    elif len(states) == 1 and type(states[0]) is list:
        leaves = states[0]
    else:
        flat: dict[Path, tp.Any] = {}
        for s in states:
            flat.update(s if isinstance(s, FlatState) else _to_state(s).flat_state())
        leaves = _treegraph.leaves_by_path(graphdef, flat)
    return _treegraph.unflatten_tree_mode(graphdef, leaves, copy=copy)


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


def _root_leaf(states: tuple) -> tuple[tp.Any] | None:
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


def _to_state(state: tp.Any) -> State:
    if type(state) is State:
        return state
    if isinstance(state, (FlatState, Mapping)):
        return ensure_state(state)
    raise TypeError(f"merge/update: expected a State or a mapping, got {type(state).__name__}")


def leaf_paths(graphdef: GraphDef) -> list[Path]:
    """The paths of the GraphDef's leaves, in its leaf order."""
    return [path for path, _ in leaf_ops(graphdef)]


def state(
    node: tp.Any, *filters: filterlib.Filter, graph: bool | None = None, graph_updates: bool | None = None
) -> tp.Any:
    """The node's State, or one State per filter."""
    _treemode.check_node(node, "state", graph)
    if lookup(type(node)) is None and is_leaf_root(node):
        _, *states = _split_leaf(node, filters)
        if not filters:
            return states[0]
        return states[0] if len(states) == 1 else tuple(states)
    return _graph.state(node, *filters)


def graphdef(node: tp.Any, /, *, graph: bool | None = None, graph_updates: bool | None = None) -> GraphDef:
    """The GraphDef of `node` (what `split` returns first)."""
    _treemode.check_node(node, "graphdef", graph)
    if _treemode.is_tree_mode(graph):
        return _treegraph.flatten_tree_mode(node)[0]
    return _graph.graphdef(node)


def clone(
    node: tp.Any,
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
    _treemode.check_node(node, "clone", graph)
    if not variables:
        gd, pairs = _graph.flatten(node, copy=False)
        if not pairs or pairs[0][0] != ():
            return _graph.unflatten(gd, dict(pairs), copy=False)
        return pairs[0][1]
    gd, st = split(node, graph=graph)
    if arrays:
        st = jax.tree.map(jnp.copy, st)
    return merge(gd, st, copy=True)


# -- update / pop ------------------------------------------------------------------
def update(node: tp.Any, state: tp.Any, /, *states: tp.Any) -> None:
    """Write the states' values into `node` in place."""
    all_states = (state, *states)
    if isinstance(node, VariableLike):
        given = [s for s in all_states if not isinstance(s, Mapping) or len(s)]
        if len(given) != 1 or isinstance(given[0], Mapping):
            raise ValueError(
                f"update: a Variable root takes exactly one Variable or value, got {all_states!r}"
            )
        _update.write(node, {(): given[0]})
        return
    _update.update(node, *(_to_state(s) for s in all_states))


def pop(
    node: tp.Any, *filters: filterlib.Filter, graph: bool | None = None, graph_updates: bool | None = None
) -> tp.Any:
    """Remove the leaves matching `filters` from `node`; return them as State(s)."""
    return _update.pop(node, *filters)


def graph_pop(node: tp.Any, filters: tuple[filterlib.Filter, ...]) -> tuple[State, ...]:
    """`pop` with the filters as a tuple, always returning a tuple of States."""
    if not filters:
        return ()
    popped = _update.pop(node, *filters)
    return popped if len(filters) > 1 else (popped,)


# -- traversal -----------------------------------------------------------------------
def iter_graph(
    node: tp.Any, /, *, graph: bool | None = None, graph_updates: bool | None = None
) -> tp.Iterator[tuple[Path, tp.Any]]:
    """(path, value) for every node and leaf, children first; shared objects once."""
    _treemode.check_node(node, "iter_graph", graph)
    return _traverse.iter_graph(node)


def recursive_map(
    f: tp.Callable[[Path, tp.Any], tp.Any],
    node: tp.Any,
    /,
    *,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> tp.Any:
    """A copy of `node` with every value replaced by `f(path, value)`, children first."""
    _treemode.check_node(node, "recursive_map", graph)
    return _traverse.recursive_map(f, node)


def find_duplicates(
    node: tp.Any,
    /,
    *,
    only: filterlib.Filter = ...,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> list[list[Path]]:
    """Groups of paths reaching the same graph node or Variable (matching `only`)."""
    groups = _traverse.find_duplicates(node)
    if only is Ellipsis:
        return groups
    pred = filterlib.to_predicate(only)
    out = []
    for paths in groups:
        obj = _update._target(node, paths[0])
        kept = [paths[0]] + [p for p in paths[1:] if pred(p, obj)]
        if len(kept) > 1:
            out.append(kept)
    return out


def map(
    f: tp.Callable[[Path, tp.Any], tp.Any],
    node: tp.Any,
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
    _treemode.check_node(node, "map", graph)
    gd, pairs = _graph.flatten(node, copy=False)
    if pairs and pairs[0][0] == ():
        return f((), pairs[0][1])  # a leaf root: the result is the new node
    leaves: dict[Path, tp.Any] = {}
    patches: list[tuple[Path, tp.Any]] = []
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
    out = _graph.unflatten(gd, leaves, copy=False)
    for path, value in patches:
        _set_at(out, path, value)
    return out


def _set_at(root: tp.Any, path: Path, value: tp.Any) -> None:
    parent = _update._target(root, path[:-1])
    if lookup(type(parent)) is None and type(parent) not in (list, dict):
        raise ValueError(
            f"map: cannot place the new value at {errors.path_str(path)}: its parent is a "
            f"{type(parent).__name__}, which cannot change in place. Return a Variable of "
            "the same type there, or keep recreate_variables=True."
        )
    _update._set(parent, path[-1], value)


def as_pure(tree: tp.Any) -> tp.Any:
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

    def __setattr__(self, name: str, value: tp.Any) -> None:
        if name in ("_graphdef", "_state"):
            object.__setattr__(self, name, value)
        else:
            self[name] = value

    def __getitem__(self, key: tp.Any) -> tp.Any:
        return self._state[key]

    def __setitem__(self, key: tp.Any, value: tp.Any) -> None:
        mapping = dict(self._state._mapping)
        mapping[key] = value
        object.__setattr__(self, "_state", State(mapping))

    def __delitem__(self, key: tp.Any) -> None:
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


def _gs_flatten_with_keys(x: GraphState):
    children, keys = _state_flatten_with_keys(x._state)
    return children, (x._graphdef, keys)


def _gs_flatten(x: GraphState):
    children, keys = _state_flatten(x._state)
    return children, (x._graphdef, keys)


def _gs_unflatten(aux: tuple, children: tp.Iterable) -> GraphState:
    graphdef, keys = aux
    return GraphState(graphdef, State._raw(dict(zip(keys, children))))


jax.tree_util.register_pytree_with_keys(GraphState, _gs_flatten_with_keys, _gs_unflatten, _gs_flatten)


def unpack(
    node: tp.Any, *filters: filterlib.Filter, graph: bool | None = None, graph_updates: bool | None = None
) -> GraphState | tuple[GraphState, ...]:
    """Like `split`, but each State carries the GraphDef (`nnx.merge(*graph_states)`)."""
    _treemode.check_node(node, "unpack", graph)
    gd, *states = split(node, *filters)
    states = [s if isinstance(s, State) else State({(): s}) for s in states]
    if len(states) == 1:
        return GraphState(gd, states[0])
    return tuple(GraphState(gd, s) for s in states)


PureState = tuple  # `tuple[GraphDef[Node], State]`; subscriptable as in Flax
