"""The one flattening implementation and everything built on it.

`flatten` walks an object graph once and returns a GraphDef plus the leaves
in canonical path order; `unflatten` builds fresh objects from a GraphDef and
leaves without calling any `__init__`. `split`/`merge`/`state`/`graphdef`/
`clone` are thin wrappers. The facade's writes (`update`, `pop`) are in
`update.py`, iterations over a graph in `traverse.py`.
"""

from __future__ import annotations

import typing as tp


from nnxfn.core import errors, splitcache
from nnxfn.core import filters as filterlib
from nnxfn.core.graphdef import (
    ArrayDef,
    BoxedDef,
    ContainerDef,
    OP_BOXED,
    OP_PYTREE,
    OP_VAR,
    GraphDef,
    PytreeDef,
    StaticDef,
)
from nnxfn.core.program import _unflatten_ops, flatten_like, leaf_ops  # noqa: F401 - flatten_like: read here
from nnxfn.core.walker import _mutable, walk  # noqa: F401 - _mutable: read from here
from nnxfn.core.kinds import (  # noqa: F401 - children_of, is_array: also read from here
    _ARRAY_TYPES,
    _CONTAINERS,
    _K_ARRAY,
    _K_CONT,
    _K_NODE,
    _K_OTHER,
    _K_STATIC,
    _K_VAR,
    _container_children,
    _kind,
    _pytree_children,
    children_of,
    is_array,
)
from nnxfn.core.registry import key_order
from nnxfn.core.state import State, partition, partition_pairs, wrap as _wrap_state
from nnxfn.core.state import _set_flat
from nnxfn.core.variable_like import VariableLike

Path = tuple[tp.Any, ...]
Leaf = tp.Any


# -- flatten ----------------------------------------------------------------
def flatten(
    node: tp.Any,
    *,
    copy: bool = True,
    objects: list | None = None,
    containers: list | None = None,
    whole_pytrees: dict | None = None,
) -> tuple[GraphDef, list[tuple[Path, Leaf]]]:
    """Walk `node` once: a GraphDef and its (path, leaf) pairs.

    Leaves are arrays and Variables; with `copy=True` each Variable is a
    detached copy (same type, value and metadata), else the live object.
    See `walker.walk` for `objects`, `containers` and `whole_pytrees`.
    """
    paths: list = []
    graphdef, _, leaves = walk(
        node, copy=copy, paths=paths, objects=objects, containers=containers, whole_pytrees=whole_pytrees
    )
    return graphdef, list(zip(paths, leaves))


# -- unflatten ----------------------------------------------------------------
def unflatten(
    graphdef: GraphDef,
    leaves: tp.Mapping[Path, Leaf],
    *,
    copy: bool = True,
    reuse: tp.Mapping[int, tp.Any] | None = None,
    objects: dict[int, tp.Any] | None = None,
    adopt: bool = False,
) -> tp.Any:
    """Build fresh objects from `graphdef` and a {path: leaf} mapping.

    No `__init__` runs. Variables are new objects unless `copy=False`, in
    which case Variable leaves are used as they are (a view sharing state).
    `reuse` maps GraphDef indices to existing objects that are updated in
    place instead of created (how transforms commit onto the caller's
    objects); `objects`, if given, receives index -> object (objects already
    in it, indices 0, 1, ..., can be referred to). A foreign pytree
    may be given whole at its path (see `flatten(whole_pytrees=...)`).
    Raises, naming the paths, before anything is made or written, when the
    leaves do not fit the GraphDef. `adopt`: see `program._unflatten_ops`.
    """
    entries = leaf_ops(graphdef, whole=leaves)
    missing = [path for path, _ in entries if path not in leaves]
    if missing:
        raise ValueError(errors.missing_leaves(missing))
    if len(entries) != len(leaves):
        extra = set(leaves) - {path for path, _ in entries}
        raise ValueError(errors.unexpected_leaves(sorted(extra, key=_path_order)))
    ordered = [leaves[path] for path, _ in entries]
    for (path, op), leaf in zip(entries, ordered):
        if op[0] == OP_VAR and isinstance(leaf, VariableLike) and not isinstance(leaf, op[1]):
            raise ValueError(errors.wrong_variable_type(path, op[1], type(leaf)))
    whole = {id(op) for _, op in entries if op[0] == OP_PYTREE}
    # Objects an earlier `unflatten` made (a merge context): indices go on after them.
    made: list = [objects[i] for i in range(len(objects))] if objects else []
    out = _unflatten_ops(
        graphdef, ordered, copy=copy, trusted=False, objects=made, reuse=reuse, whole=whole, adopt=adopt
    )
    if objects is not None:
        objects.update(enumerate(made))
    return out


def _path_order(path: Path) -> tuple:
    return tuple(key_order(k) for k in path)


# -- split / merge / state ------------------------------------------------------
_partition = partition_pairs  # (pairs, filters, exhaustive) -> one State per filter


def split(node: tp.Any, *filters: filterlib.Filter) -> tuple[tp.Any, ...]:
    """`graphdef, state = split(node)` or `graphdef, s1, s2 = split(node, f1, f2)`.

    Every leaf must match one filter (use `...` last to collect the rest).
    The States hold the model's own Variables (as Flax's graph mode).
    """
    if filters:
        paths: list = []
        graphdef, _, leaves = walk(node, copy=False, paths=paths)
        return (graphdef, *_partition_fast(graphdef, paths, leaves, filters, exhaustive=True))
    found = splitcache.lookup(node)
    if found is not None:
        return found
    clock = splitcache.CLOCK[0]
    containers: list = []
    pure: dict = {}  # foreign pytrees holding only values: may change in place unseen
    graphdef, state, leaves = walk(node, copy=False, containers=containers, whole_pytrees=pure)
    if type(state) is not State:  # a root without children (see `api.split` for leaf roots)
        state = _wrap_state({})
    _set_flat(state, (graphdef, leaves, None, 0, None))
    if not pure:
        splitcache.store(node, clock, (graphdef, state), containers)
    return graphdef, state


def _flat_leaves(states: tp.Iterable[tp.Any]) -> dict[Path, Leaf]:
    flat: dict[Path, Leaf] = {}
    for s in states:
        if not isinstance(s, State):
            s = State(s)
        flat.update(s.flat_state())
    return flat


def merge(graphdef: GraphDef, *states: tp.Any, copy: bool = False) -> tp.Any:
    """Build a new object graph from `graphdef` and the states of `split`.

    The new graph holds the states' own Variables (as Flax's `merge`), or
    copies of them with `copy=True`."""
    if states:
        leaves = _positional_leaves(graphdef, states)
        if leaves is not None:
            if copy or len(states) > 1:
                return _unflatten_ops(graphdef, leaves, copy=copy)
            # The new graph holds the State's Variables: splitting it gives `graphdef, state` again.
            clock = splitcache.CLOCK[0]
            built: list = []
            out = _unflatten_ops(graphdef, leaves, copy=False, built=built)
            if all(type(c) is list or type(c) is dict for c in built):  # else: see `split`
                splitcache.store(out, clock, (graphdef, states[0]), built)
            return out
    return unflatten(graphdef, _flat_leaves(states), copy=copy, adopt=True)


def _positional_leaves(graphdef: GraphDef, states: tuple) -> list | None:
    """The leaves in GraphDef order if `states` are exactly the States one
    `split` returned with `graphdef` (in any order); else None (go by paths).

    Such a State holds `_nnx_flat = (graphdef, leaves, token, i, positions)`:
    its leaves and, for the i-th State of a filtered split (all of them share
    `token`, a one-item list of their number), their positions in the GraphDef."""
    s = states[0]
    first = s._nnx_flat if type(s) is State else None
    if first is None or first[0] is not graphdef:
        return None
    token = first[2]
    if token is None:
        return first[1] if len(states) == 1 else None
    if len(states) != token[0]:
        return None
    flats = []
    for s in states:
        flat = s._nnx_flat if type(s) is State else None
        if flat is None or flat[2] is not token:
            return None
        flats.append(flat)
    if sorted(f[3] for f in flats) != list(range(token[0])):
        return None
    leaves = [None] * graphdef.num_leaves
    for flat in flats:
        for pos, leaf in zip(flat[4], flat[1]):
            leaves[pos] = leaf
    return leaves


def _partition_fast(
    graphdef: GraphDef, paths: list, leaves: list, filters: tuple, exhaustive: bool
) -> tuple[State, ...]:
    """`_partition` of a fast walk; the States remember their leaf positions."""
    buckets = partition(paths, leaves, filters, exhaustive)
    token = [len(buckets)]
    states = []
    for i, positions in enumerate(buckets):
        part = [leaves[p] for p in positions]
        state = _nest([paths[p] for p in positions], part)
        _set_flat(state, (graphdef, part, token, i, positions))
        states.append(state)
    return tuple(states)


def _nest(paths: list, leaves: list) -> State:
    """`State.from_flat_path(zip(paths, leaves))` for a fast walk's leaves
    (distinct paths, in canonical order; no leaf is a plain dict)."""
    root: dict = {}
    for path, leaf in zip(paths, leaves):
        d = root
        for key in path[:-1]:
            sub = d.get(key)
            if sub is None:
                sub = d[key] = {}
            d = sub
        d[path[-1]] = leaf

    order = []  # (parent, key, dict) in pre-order; frozen in reverse: children first
    stack: list = [(None, None, root)]
    while stack:
        parent, key, d = stack.pop()
        order.append((parent, key, d))
        stack.extend((d, k, v) for k, v in d.items() if type(v) is dict)
    for parent, key, d in reversed(order):
        if parent is None:
            return _wrap_state(d)
        parent[key] = _wrap_state(d)
    raise AssertionError("unreachable")


def state(node: tp.Any, *filters: filterlib.Filter) -> tp.Any:
    """The node's State, or one State per filter (leaves matching none are left out)."""
    if not filters:
        return split(node)[1]
    paths: list = []
    graphdef, _, leaves = walk(node, copy=False, paths=paths)
    states = _partition_fast(graphdef, paths, leaves, filters, exhaustive=False)
    for s in states:
        _set_flat(s, None)  # no GraphDef to pair them with
    return states[0] if len(states) == 1 else states


def graphdef(node: tp.Any) -> GraphDef:
    return flatten(node)[0]


def clone(node: tp.Any) -> tp.Any:
    """A deep copy through split/merge: same values and sharing, new objects."""
    return merge(*split(node), copy=True)


def _pure(d: tp.Any) -> bool:
    """True if a GraphDef subtree holds no Variable, graph node or back-reference."""
    if isinstance(d, (ContainerDef, PytreeDef)):
        return all(_pure(child) for _, child in d.children)
    return isinstance(d, (ArrayDef, BoxedDef, StaticDef))


def boxed_paths(graphdef: GraphDef) -> frozenset:
    """Paths of leaves that are boxed only in the State (no live Variable)."""
    return frozenset(path for path, op in leaf_ops(graphdef) if op[0] == OP_BOXED)
