"""Graph mode's split and merge: what the public functions of `api.py` are built on.

- `flatten_graph` walks an object graph once (`walker.walk`) and returns a
  GraphDef plus its (path, leaf) pairs in canonical path order;
  `unflatten_graph` builds fresh objects from a GraphDef and {path: leaf}
  without calling any `__init__` (checking the leaves fit first).
- `split_graph` / `merge_graph` / `state_of_graph`: `split`/`merge`/`state` of
  a node with children, handing out (and taking) the model's own Variables,
  as Flax's graph mode. `split_graph` returns its previous result while nothing
  structural changed (`splitcache.py`); a State it made remembers its leaves
  in GraphDef order, so `merge_graph` of exactly those States skips the paths.

Leaf roots, tree mode, Flax's keywords and the other state forms are handled
by `api.py`; the in-place writes (`update`, `pop`) are in `writes.py`.
"""

from __future__ import annotations

import typing as tp


from nnxfn.core import caches, errors, splitcache
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
from nnxfn.core.kinds import children_of as children_of, is_array as is_array  # also read from here
from nnxfn.core.program import _unflatten_ops, leaf_ops
from nnxfn.core.program import flatten_like as flatten_like  # also read from here
from nnxfn.core.walker import walk
from nnxfn.core.registry import key_order
from nnxfn.core.state import State, partition, wrap as _wrap_state
from nnxfn.core.state import _set_flat
from nnxfn.core.variable_like import VariableLike

Path = tuple[tp.Any, ...]
Leaf = tp.Any


# -- flatten ----------------------------------------------------------------
def flatten_graph(
    node: object,
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
def unflatten_graph(
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
    may be given whole at its path (see `flatten_graph(whole_pytrees=...)`).
    Raises, naming the paths, before anything is made or written, when the
    leaves do not fit the GraphDef. `adopt`: see `program._unflatten_ops`.
    """
    entries = leaf_ops(graphdef, whole=leaves)
    missing = [path for path, _ in entries if path not in leaves]
    if missing:
        raise ValueError(errors.missing_leaves(missing))
    if len(entries) != len(leaves):
        extra = set(leaves) - {path for path, _ in entries}
        raise ValueError(errors.unexpected_leaves(sorted(extra, key=path_order)))
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


def path_order(path: Path) -> tuple:
    """Sort key of a path: its keys in canonical order (`registry.key_order`)."""
    return tuple(key_order(k) for k in path)


# -- split / merge / state ------------------------------------------------------
def split_graph(node: object, *filters: filterlib.Filter) -> tuple[tp.Any, ...]:
    """`graphdef, state = split_graph(node)` or `graphdef, s1, s2 = split_graph(node, f1, f2)`.

    Every leaf must match one filter (use `...` last to collect the rest).
    The States hold the model's own Variables (as Flax's graph mode).
    """
    if filters:
        paths: list = []
        graphdef, _, leaves = walk(node, copy=False, paths=paths)
        return (graphdef, *_partition_fast(graphdef, paths, leaves, filters, exhaustive=True))
    found = splitcache.cached_split(node)
    if found is not None:
        return found
    clock = caches.STRUCTURE.now
    containers: list = []
    pure: dict = {}  # foreign pytrees holding only values: may change in place unseen
    graphdef, state, leaves = walk(node, copy=False, containers=containers, whole_pytrees=pure)
    if type(state) is not State:  # a root without children (see `api.split` for leaf roots)
        state = _wrap_state({})
    _set_flat(state, (graphdef, leaves, None, 0, None))
    if not pure:
        splitcache.remember_split(node, clock, (graphdef, state), containers)
    return graphdef, state


def flat_leaves(states: tp.Iterable[tp.Any]) -> dict[Path, Leaf]:
    """{path: leaf} of several States (or nested mappings), later ones winning."""
    flat: dict[Path, Leaf] = {}
    for s in states:
        if not isinstance(s, State):
            s = State(s)
        flat.update(s.flat_state())
    return flat


def merge_graph(graphdef: GraphDef, *states: tp.Any, copy: bool = False) -> tp.Any:
    """Build a new object graph from `graphdef` and the States of `split_graph`.

    The new graph holds the states' own Variables (as Flax's `merge`), or
    copies of them with `copy=True`."""
    if states:
        leaves = _positional_leaves(graphdef, states)
        if leaves is not None:
            if copy or len(states) > 1:
                return _unflatten_ops(graphdef, leaves, copy=copy)
            # The new graph holds the State's Variables: splitting it gives `graphdef, state` again.
            clock = caches.STRUCTURE.now
            built: list = []
            out = _unflatten_ops(graphdef, leaves, copy=False, built=built)
            if all(type(c) is list or type(c) is dict for c in built):  # else: see `split`
                splitcache.remember_split(out, clock, (graphdef, states[0]), built)
            return out
    return unflatten_graph(graphdef, flat_leaves(states), copy=copy, adopt=True)


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
    """`state.partition_pairs` of a fast walk; the States remember their leaf positions."""
    buckets = partition(paths, leaves, filters, exhaustive)
    token = [len(buckets)]
    states = []
    for i, positions in enumerate(buckets):
        part = [leaves[p] for p in positions]
        state = nest_state([paths[p] for p in positions], part)
        _set_flat(state, (graphdef, part, token, i, positions))
        states.append(state)
    return tuple(states)


def nest_state(paths: list, leaves: list) -> State:
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


def state_of_graph(node: object, *filters: filterlib.Filter) -> tp.Any:
    """The node's State, or one State per filter (leaves matching none are left out)."""
    if not filters:
        return split_graph(node)[1]
    paths: list = []
    graphdef, _, leaves = walk(node, copy=False, paths=paths)
    states = _partition_fast(graphdef, paths, leaves, filters, exhaustive=False)
    for s in states:
        _set_flat(s, None)  # no GraphDef to pair them with
    return states[0] if len(states) == 1 else states


def _pure(d: object) -> bool:
    """True if a GraphDef subtree holds no Variable, graph node or back-reference."""
    if isinstance(d, (ContainerDef, PytreeDef)):
        return all(_pure(child) for _, child in d.children)
    return isinstance(d, (ArrayDef, BoxedDef, StaticDef))


def boxed_paths(graphdef: GraphDef) -> frozenset:
    """Paths of leaves that are boxed only in the State (no live Variable)."""
    return frozenset(path for path, op in leaf_ops(graphdef) if op[0] == OP_BOXED)
