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
    GraphDef,
    PytreeDef,
    StaticDef,
)
from nnxfn.core.kinds import children_of as children_of, is_array as is_array  # also read from here
from nnxfn.core.kinds import pytree_children as pytree_children  # also read from here
from nnxfn.core.ops import BoxedOp, PytreeOp, VariableOp
from nnxfn.core.program import build, build_checked, commit_into, leaf_ops
from nnxfn.core.program import flatten_like as flatten_like  # also read from here
from nnxfn.core.walker import walk_graph
from nnxfn.core.registry import key_order
from nnxfn.core.state import State, partition, wrap as _wrap_state
from nnxfn.core.state import SplitGroup, SplitLeaves, set_split_leaves, split_leaves
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
    See `walker.walk_graph` for `objects`, `containers` and `whole_pytrees`.
    """
    paths: list = []
    graphdef, _, leaves = walk_graph(
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
    leaves do not fit the GraphDef. `adopt`: see `program.build_checked`.
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
        if (
            type(op) is VariableOp
            and isinstance(leaf, VariableLike)
            and not isinstance(leaf, op.variable_type)
        ):
            raise ValueError(errors.wrong_variable_type(path, op.variable_type, type(leaf)))
    whole = {id(op) for _, op in entries if type(op) is PytreeOp}
    # Objects an earlier `unflatten` made (a merge context): indices go on after them.
    known: list = [objects[i] for i in range(len(objects))] if objects else []
    if reuse:
        built = commit_into(graphdef, ordered, reuse, copy=copy, known=known, whole=whole, adopt=adopt)
    else:
        built = build_checked(graphdef, ordered, copy=copy, known=known, whole=whole, adopt=adopt)
    if objects is not None:
        objects.update(enumerate(built.objects))
    return built.root


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
        graphdef, _, leaves = walk_graph(node, copy=False, paths=paths)
        return (graphdef, *_partition_fast(graphdef, paths, leaves, filters, exhaustive=True))
    found = splitcache.cached_split(node)
    if found is not None:
        return found
    clock = caches.STRUCTURE.now
    containers: list = []
    pure: dict = {}  # foreign pytrees holding only values: may change in place unseen
    graphdef, state, leaves = walk_graph(node, copy=False, containers=containers, whole_pytrees=pure)
    if type(state) is not State:  # a root without children (see `api.split` for leaf roots)
        state = _wrap_state({})
    set_split_leaves(state, SplitLeaves(graphdef, leaves, None, 0, None))
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
                return build(graphdef, leaves, copy=copy).root
            # The new graph holds the State's Variables: splitting it gives `graphdef, state` again.
            clock = caches.STRUCTURE.now
            out, _, made = build(graphdef, leaves, copy=False)
            if all(type(c) is list or type(c) is dict for c in made):  # else: see `split`
                splitcache.remember_split(out, clock, (graphdef, states[0]), made)
            return out
    return unflatten_graph(graphdef, flat_leaves(states), copy=copy, adopt=True)


def _positional_leaves(graphdef: GraphDef, states: tuple) -> list | None:
    """The leaves in GraphDef order if `states` are exactly the States one
    `split` returned with `graphdef` (in any order); else None (go by paths).

    Such a State holds a `SplitLeaves`: its leaves and, for a State of a
    filtered split (all of them share one `SplitGroup`), their positions."""
    first = split_leaves(states[0])
    if first is None or first.graphdef is not graphdef:
        return None
    group = first.group
    if group is None:
        return first.leaves if len(states) == 1 else None
    if len(states) != group.size:
        return None
    flats = []
    for s in states:
        flat = split_leaves(s)
        if flat is None or flat.group is not group:
            return None
        flats.append(flat)
    if sorted(f.number for f in flats) != list(range(group.size)):
        return None
    leaves = [None] * graphdef.num_leaves
    for flat in flats:
        for pos, leaf in zip(flat.positions or (), flat.leaves):
            leaves[pos] = leaf
    return leaves


def _partition_fast(
    graphdef: GraphDef, paths: list, leaves: list, filters: tuple, exhaustive: bool
) -> tuple[State, ...]:
    """`state.partition_pairs` of a fast walk; the States remember their leaf positions."""
    buckets = partition(paths, leaves, filters, exhaustive)
    group = SplitGroup(len(buckets))
    states = []
    for i, positions in enumerate(buckets):
        part = [leaves[p] for p in positions]
        state = nest_state([paths[p] for p in positions], part)
        set_split_leaves(state, SplitLeaves(graphdef, part, group, i, positions))
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
    graphdef, _, leaves = walk_graph(node, copy=False, paths=paths)
    states = _partition_fast(graphdef, paths, leaves, filters, exhaustive=False)
    for s in states:
        set_split_leaves(s, None)  # no GraphDef to pair them with
    return states[0] if len(states) == 1 else states


def _pure(d: object) -> bool:
    """True if a GraphDef subtree holds no Variable, graph node or back-reference."""
    if isinstance(d, (ContainerDef, PytreeDef)):
        return all(_pure(child) for _, child in d.children)
    return isinstance(d, (ArrayDef, BoxedDef, StaticDef))


def boxed_paths(graphdef: GraphDef) -> frozenset:
    """Paths of leaves that are boxed only in the State (no live Variable)."""
    return frozenset(path for path, op in leaf_ops(graphdef) if type(op) is BoxedOp)
