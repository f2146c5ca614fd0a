"""The one flattening implementation and everything built on it.

`flatten` walks an object graph once and returns a GraphDef plus the leaves
in canonical path order; `unflatten` builds fresh objects from a GraphDef and
leaves without calling any `__init__`. `split`/`merge`/`state`/`graphdef`/
`clone` are thin wrappers. The facade's writes (`update`, `pop`) are in
`update.py`, iterations over a graph in `traverse.py`.
"""

from __future__ import annotations

import typing as tp


from nnxfn.core import errors
from nnxfn.core import filters as filterlib
from nnxfn.core.graphdef import (
    ARRAY,
    ArrayDef,
    BoxedDef,
    ContainerDef,
    GraphDef,
    NodeDef,
    PytreeDef,
    Ref,
    StaticDef,
    VariableDef,
)
from nnxfn.core.fastpath import _flatten_fast, _unflatten_ops
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
from nnxfn.core.links import apply_links, find_links
from nnxfn.core.registry import KINDS, NodeImpl, foreign_leaf_type, key_order, lookup
from nnxfn.core.state import State, partition, partition_pairs, wrap as _wrap_state
from nnxfn.core.state import _set_flat
from nnxfn.core.variable_like import DataLeaf, VariableLike

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
    A Variable or graph node reachable by several paths appears once, at
    its first path in canonical order. If `objects` is given, the live
    graph nodes and Variables are appended to it in GraphDef index order;
    if `containers` is given, every mutable list/dict walked, and every
    mutable foreign pytree holding a Variable or graph node, is appended to it
    (caches use them to notice in-place edits); if `whole_pytrees` is
    given, every outermost foreign pytree holding no Variable or graph node
    is recorded in it as {path: pytree} (Modules show them whole to JAX).
    """
    if objects is None and containers is None:
        paths: list = []
        fast = _flatten_fast(node, paths, copy)
        if fast is not None:  # no foreign pytree in it: nothing for `whole_pytrees`
            return fast[0], list(zip(paths, fast[2]))
    index: dict[int, int] = {}
    leaves: list[tuple[Path, Leaf]] = []
    linking: list[tuple[int, tp.Any]] = []  # (index, node) of nodes that have links
    if objects is None:
        objects = []

    kinds = KINDS
    # Iterative (no recursion limit): a frame per open node/container/pytree,
    # [make(kids) -> def, iterator over (key, child), kids, path, foreign, key].
    top: list = []
    stack: list = [[None, iter(((None, node),)), top, (), (), None]]
    while stack:
        frame = stack[-1]
        make, children, kids, base, foreign, _ = frame
        for k, x in children:
            path = base if make is None else base + (k,)
            kind = kinds.get(type(x))
            if kind is None:
                kind = _kind(type(x))
            if kind == _K_VAR:
                i = index.get(id(x))
                if i is not None:
                    kids.append((k, Ref(i)))
                    continue
                i = index[id(x)] = len(index)
                objects.append(x)
                meta = x.metadata_items()
                leaves.append((path, type(x).from_parts(x.raw_value, meta) if copy else x))
                kids.append((k, VariableDef(type(x), i, meta)))
            elif kind == _K_NODE:
                impl = tp.cast(NodeImpl, lookup(type(x)))
                i = index.get(id(x))
                if i is not None:
                    kids.append((k, Ref(i)))
                    continue
                i = index[id(x)] = len(index)
                objects.append(x)
                if impl.links is not None:
                    linking.append((i, x))
                make = _node_maker(type(x), i, impl.static(x))
                stack.append([make, iter(list(impl.children(x))), [], path, (), k])
                break
            elif kind == _K_ARRAY or (kind == _K_OTHER and isinstance(x, _ARRAY_TYPES)):
                boxed = foreign_leaf_type(path, x, foreign) if foreign else None
                if boxed is not None:
                    leaves.append((path, boxed.from_parts(x, ())))
                    kids.append((k, BoxedDef(boxed)))
                else:
                    leaves.append((path, x))
                    kids.append((k, ARRAY))
            elif kind == _K_CONT:
                if containers is not None and type(x) is not tuple:
                    containers.append(x)
                make = _container_maker(type(x))
                stack.append([make, iter(_container_children(x)), [], path, foreign, k])
                break
            elif kind == _K_STATIC:
                kids.append((k, StaticDef(x)))
            elif type(x) is DataLeaf:  # a value its node declares a leaf (`nnx.data(1)`)
                leaves.append((path, x.value))
                kids.append((k, ARRAY))
            else:
                found = _pytree_children(x)
                if found is None:
                    kids.append((k, StaticDef(x)))  # hashed by contents if unhashable
                    continue
                treedef, pairs = found
                make = _pytree_maker(treedef, x, path, foreign, whole_pytrees, containers)
                stack.append([make, iter(pairs), [], path, foreign + (type(x),), k])
                break
        else:  # every child seen: build this frame's def and hand it to its parent
            stack.pop()
            if make is not None:
                stack[-1][2].append((frame[5], make(tuple(kids))))

    return GraphDef(top[0][1], len(leaves), find_links(linking, index) if linking else ()), leaves


def _node_maker(t: type, i: int, static: tp.Any) -> tp.Callable:
    return lambda kids: NodeDef(t, i, static, kids)


def _container_maker(t: type) -> tp.Callable:
    return lambda kids: ContainerDef(t, kids)


def _pytree_maker(
    treedef: tp.Any,
    x: tp.Any,
    path: Path,
    foreign: tuple,
    whole_pytrees: dict | None,
    containers: list | None,
) -> tp.Callable:
    def make(kids: tuple) -> PytreeDef:
        d = PytreeDef(treedef, kids)
        if whole_pytrees is not None and not foreign and _pure(d):
            whole_pytrees[path] = x
        if containers is not None and not _pure(d) and _mutable(x):
            containers.append(x)
        return d

    return make


# -- unflatten ----------------------------------------------------------------
def unflatten(
    graphdef: GraphDef,
    leaves: tp.Mapping[Path, Leaf],
    *,
    copy: bool = True,
    reuse: tp.Mapping[int, tp.Any] | None = None,
    objects: dict[int, tp.Any] | None = None,
) -> tp.Any:
    """Build fresh objects from `graphdef` and a {path: leaf} mapping.

    No `__init__` runs. Variables are new objects unless `copy=False`, in
    which case Variable leaves are used as they are (a view sharing state).
    `reuse` maps GraphDef indices to existing objects that are updated in
    place instead of created (how transforms commit onto the caller's
    objects); `objects`, if given, receives index -> object.
    Raises, naming the paths, when the leaves do not fit the GraphDef.
    """
    reuse = reuse or {}
    if objects is None:
        objects = {}
    used: set[Path] = set()
    missing: list[Path] = []

    def take(path: Path) -> tp.Any:
        try:
            leaf = leaves[path]
        except KeyError:
            missing.append(path)
            return None
        used.add(path)
        return leaf

    def build(d: tp.Any, path: Path) -> tp.Any:
        if isinstance(d, VariableDef):
            leaf = take(path)
            if isinstance(leaf, VariableLike):
                if not isinstance(leaf, d.type):
                    raise ValueError(errors.wrong_variable_type(path, d.type, type(leaf)))
                value, meta = leaf.raw_value, leaf.metadata_items()
            else:
                value, meta = leaf, d.metadata
            var = reuse.get(d.index)
            if var is not None:
                var.set_raw(value)
                if var.metadata_items() != meta:
                    var.set_metadata_items(meta)
            elif isinstance(leaf, VariableLike) and not copy:
                var = leaf
            else:
                var = d.type.from_parts(value, meta)
            objects[d.index] = var
            return var
        if isinstance(d, (ArrayDef, BoxedDef)):
            leaf = take(path)
            return leaf.raw_value if isinstance(leaf, VariableLike) else leaf
        if isinstance(d, StaticDef):
            return d.value
        if isinstance(d, Ref):
            return objects[d.index]
        if isinstance(d, NodeDef):
            impl = tp.cast(NodeImpl, lookup(d.type))
            node = reuse.get(d.index)
            if node is None:
                node = impl.create_empty(d.type, d.static)
            else:
                keep = {k for k, _ in d.children}
                for k in [k for k, _ in impl.children(node) if k not in keep]:
                    impl.del_child(node, k)
            objects[d.index] = node
            for k, child in d.children:
                impl.set_child(node, k, build(child, path + (k,)))
            return node
        if isinstance(d, ContainerDef):
            values = [build(child, path + (k,)) for k, child in d.children]
            if d.type is dict:
                return {k: v for (k, _), v in zip(d.children, values)}
            return d.type(values)
        if isinstance(d, PytreeDef):
            if path in leaves:  # given whole (see `flatten(whole_pytrees=...)`)
                return take(path)
            return d.treedef.unflatten([build(child, path + (k,)) for k, child in d.children])
        raise TypeError(f"unknown GraphDef entry {d!r}")

    out = build(graphdef.root, ())
    if missing:
        raise ValueError(errors.missing_leaves(missing))
    if len(used) != len(leaves):
        raise ValueError(errors.unexpected_leaves(sorted(set(leaves) - used, key=_path_order)))
    if graphdef.links:
        apply_links(graphdef.links, objects)
    return out


def _path_order(path: Path) -> tuple:
    return tuple(key_order(k) for k in path)


# -- split / merge / state ------------------------------------------------------
_partition = partition_pairs  # (pairs, filters, exhaustive) -> one State per filter


def split(node: tp.Any, *filters: filterlib.Filter) -> tuple[tp.Any, ...]:
    """`graphdef, state = split(node)` or `graphdef, s1, s2 = split(node, f1, f2)`.

    Every leaf must match one filter (use `...` last to collect the rest).
    """
    if not filters:
        fast = _flatten_fast(node)
        if fast is not None:
            graphdef, state, leaves = fast
            _set_flat(state, (graphdef, leaves, None, 0, None))
            return graphdef, state
    else:
        paths: list = []
        fast = _flatten_fast(node, paths)
        if fast is not None:
            graphdef, _, leaves = fast
            return (graphdef, *_partition_fast(graphdef, paths, leaves, filters, exhaustive=True))
    graphdef, pairs = flatten(node)
    if not filters:
        return graphdef, State.from_flat_path(pairs)
    return (graphdef, *_partition(pairs, filters, exhaustive=True))


def _flat_leaves(states: tp.Iterable[tp.Any]) -> dict[Path, Leaf]:
    flat: dict[Path, Leaf] = {}
    for s in states:
        if not isinstance(s, State):
            s = State(s)
        flat.update(s.flat_state())
    return flat


def merge(graphdef: GraphDef, *states: tp.Any) -> tp.Any:
    """Build a new object graph from `graphdef` and the states of `split`."""
    if states:
        leaves = _positional_leaves(graphdef, states)
        if leaves is not None:
            return _unflatten_ops(graphdef.ops, leaves, links=graphdef.links)
    return unflatten(graphdef, _flat_leaves(states))


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
        fast = _flatten_fast(node)
        if fast is not None:
            return fast[1]
    else:
        paths: list = []
        fast = _flatten_fast(node, paths)
        if fast is not None:
            states = _partition_fast(fast[0], paths, fast[2], filters, exhaustive=False)
            for s in states:
                _set_flat(s, None)  # no GraphDef to pair them with
            return states[0] if len(states) == 1 else states
    _, pairs = flatten(node)
    if not filters:
        return State.from_flat_path(pairs)
    states = _partition(pairs, filters, exhaustive=False)
    return states[0] if len(states) == 1 else states


def graphdef(node: tp.Any) -> GraphDef:
    return flatten(node)[0]


def clone(node: tp.Any) -> tp.Any:
    """A deep copy through split/merge: same values and sharing, new objects."""
    return merge(*split(node))


def _mutable(x: tp.Any) -> bool:
    """Whether a foreign pytree may be edited in place (tuples, States and frozen
    dataclasses such as Equinox modules cannot, short of `object.__setattr__`)."""
    if isinstance(x, (tuple, State)):
        return False
    params = getattr(type(x), "__dataclass_params__", None)
    return not (params is not None and params.frozen)


def _pure(d: tp.Any) -> bool:
    """True if a GraphDef subtree holds no Variable, graph node or back-reference."""
    if isinstance(d, (ContainerDef, PytreeDef)):
        return all(_pure(child) for _, child in d.children)
    return isinstance(d, (ArrayDef, BoxedDef, StaticDef))


def flatten_like(
    graphdef: GraphDef, node: tp.Any, whole: tp.Container[Path] = ()
) -> list[tuple[Path, Leaf]] | None:
    """The (path, leaf) pairs of `node` at the leaf positions of `graphdef`, in its order,
    whatever their values (None, bools, tracers, sentinels); None if `node`
    does not have that structure. Used to flatten again an object graph that
    JAX unflattened with non-array leaves (e.g. an `eqx.partition` half),
    which `flatten` would read as static values. Foreign pytrees at the
    paths in `whole` are returned whole."""
    out: list[tuple[Path, Leaf]] = []

    def walk(d: tp.Any, x: tp.Any, path: Path) -> None:
        if isinstance(d, PytreeDef) and path in whole:
            out.append((path, x))
        elif isinstance(d, VariableDef):
            if not isinstance(x, d.type):
                raise LookupError
            out.append((path, x))
        elif isinstance(d, BoxedDef):
            out.append((path, x if isinstance(x, VariableLike) else d.type.from_parts(x, ())))
        elif isinstance(d, ArrayDef):
            out.append((path, x.value if type(x) is DataLeaf else x))
        elif isinstance(d, (NodeDef, ContainerDef, PytreeDef)):
            if isinstance(d, NodeDef):
                if type(x) is not d.type:
                    raise LookupError
                kids = dict(tp.cast(NodeImpl, lookup(d.type)).children(x))
            elif isinstance(d, ContainerDef):
                if type(x) is not d.type or len(x) != len(d.children):
                    raise LookupError
                kids = dict(_container_children(x))
            else:
                found = _pytree_children(x)
                kids = {} if found is None else dict(found[1])
            for k, child in d.children:
                walk(child, kids[k], path + (k,))

    try:
        walk(graphdef.root, node, ())
    except (LookupError, TypeError):
        return None
    return out


def boxed_paths(graphdef: GraphDef) -> frozenset:
    """Paths of leaves that are boxed only in the State (no live Variable)."""
    found: list[Path] = []

    def walk(d: tp.Any, path: Path) -> None:
        if isinstance(d, BoxedDef):
            found.append(path)
        for k, child in getattr(d, "children", ()):
            walk(child, path + (k,))

    walk(graphdef.root, ())
    return frozenset(found)
