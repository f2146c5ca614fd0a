"""The one flattening implementation and everything built on it.

`flatten` walks an object graph once and returns a GraphDef plus the leaves
in canonical path order; `unflatten` builds fresh objects from a GraphDef and
leaves without calling any `__init__`. `split`/`merge`/`state`/`graphdef`/
`clone` are thin wrappers; `update` and `pop` are the facade's writes.
"""

from __future__ import annotations

import typing as tp

import jax
import numpy as np

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
from nnxfn.core.registry import KINDS, NodeImpl, foreign_leaf_type, key_order, lookup
from nnxfn.core.state import State, partition, partition_pairs, wrap as _wrap_state
from nnxfn.core.state import _set_flat
from nnxfn.core.variable_like import DataLeaf, VariableLike
from nnxfn.core.fastpath import (  # noqa: E402 - fastpath reads graph lazily
    _K_ARRAY,
    _K_CONT,
    _K_NODE,
    _K_OTHER,
    _K_STATIC,
    _K_VAR,
    _flatten_fast,
    _kind,
    _unflatten_ops,
)

Path = tuple[tp.Any, ...]
Leaf = tp.Any
_ARRAY_TYPES = (jax.Array, np.ndarray, np.generic, jax.ShapeDtypeStruct, jax.Ref)
_CONTAINERS = (list, tuple, dict)
_MISSING = object()


def is_array(x: tp.Any) -> bool:
    return isinstance(x, _ARRAY_TYPES)


# -- one level of children -------------------------------------------------
def _container_children(x: tp.Any) -> list[tuple[tp.Any, tp.Any]]:
    if type(x) is dict:
        return [(k, x[k]) for k in sorted(x, key=key_order)]
    return list(enumerate(x))


def _key_of(entry: tp.Any) -> tp.Any:
    for attr in ("key", "idx", "name"):
        if hasattr(entry, attr):
            return getattr(entry, attr)
    return str(entry)


def _pytree_children(x: tp.Any) -> tuple[tp.Any, list[tuple[tp.Any, tp.Any]]] | None:
    """One level of a foreign pytree, or None if `x` is a pytree leaf."""
    pairs, treedef = jax.tree_util.tree_flatten_with_path(x, is_leaf=lambda y: y is not x)
    if treedef.num_nodes == 1 and treedef.num_leaves == 1:
        return None
    return treedef, [(_key_of(p[0]), v) for p, v in pairs]


def children_of(x: tp.Any) -> list[tuple[tp.Any, tp.Any]]:
    """The (key, child) pairs of any graph value; [] for leaves."""
    impl = lookup(type(x))
    if impl is not None:
        return list(impl.children(x))
    if isinstance(x, VariableLike) or is_array(x):
        return []
    if type(x) in _CONTAINERS:
        return _container_children(x)
    found = _pytree_children(x)
    return [] if found is None else found[1]


# -- flatten ----------------------------------------------------------------
def flatten(
    node: tp.Any, *, copy: bool = True, objects: list | None = None,
    containers: list | None = None, whole_pytrees: dict | None = None,
) -> tuple[GraphDef, list[tuple[Path, Leaf]]]:
    """Walk `node` once: a GraphDef and its (path, leaf) pairs.

    Leaves are arrays and Variables; with `copy=True` each Variable is a
    detached copy (same type, value and metadata), else the live object.
    A Variable or graph node reachable by several paths appears once, at
    its first path in canonical order. If `objects` is given, the live
    graph nodes and Variables are appended to it in GraphDef index order;
    if `containers` is given, every mutable list/dict walked is appended to
    it (caches use them to notice in-place edits); if `whole_pytrees` is
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

    def visit(x: tp.Any, path: Path, foreign: tuple = ()) -> tp.Any:
        kind = kinds.get(type(x))
        if kind is None:
            kind = _kind(type(x))
        if kind == _K_VAR:
            i = index.get(id(x))
            if i is not None:
                return Ref(i)
            i = index[id(x)] = len(index)
            objects.append(x)
            meta = x.metadata_items()
            leaves.append((path, type(x).from_parts(x.raw_value, meta) if copy else x))
            return VariableDef(type(x), i, meta)
        if kind == _K_NODE:
            impl = tp.cast(NodeImpl, lookup(type(x)))
            i = index.get(id(x))
            if i is not None:
                return Ref(i)
            i = index[id(x)] = len(index)
            objects.append(x)
            if impl.links is not None:
                linking.append((i, x))
            kids = tuple((k, visit(v, path + (k,))) for k, v in impl.children(x))
            return NodeDef(type(x), i, impl.static(x), kids)
        if kind == _K_ARRAY or (kind == _K_OTHER and isinstance(x, _ARRAY_TYPES)):
            boxed = foreign_leaf_type(path, x, foreign) if foreign else None
            if boxed is not None:
                leaves.append((path, boxed.from_parts(x, ())))
                return BoxedDef(boxed)
            leaves.append((path, x))
            return ARRAY
        if kind == _K_CONT:
            if containers is not None and type(x) is not tuple:
                containers.append(x)
            kids = tuple(
                (k, visit(v, path + (k,), foreign)) for k, v in _container_children(x)
            )
            return ContainerDef(type(x), kids)
        if kind == _K_STATIC:
            return StaticDef(x)
        if type(x) is DataLeaf:  # a value its node declares a leaf (`nnx.data(1)`)
            leaves.append((path, x.value))
            return ARRAY
        found = _pytree_children(x)
        if found is not None:
            treedef, pairs = found
            inner = foreign + (type(x),)
            kids = tuple((k, visit(v, path + (k,), inner)) for k, v in pairs)
            d = PytreeDef(treedef, kids)
            if whole_pytrees is not None and not foreign and _pure(d):
                whole_pytrees[path] = x
            return d
        try:
            hash(x)
        except TypeError:
            raise TypeError(errors.unhashable_static(path, x)) from None
        return StaticDef(x)

    root = visit(node, ())
    return GraphDef(root, len(leaves), find_links(linking, index)), leaves


def find_links(linking: list[tuple[int, tp.Any]], index: dict[int, int]) -> tuple:
    """The links (node index, key, target index) of the `linking` nodes whose
    target is in `index` (id -> GraphDef index); links leaving the graph are dropped."""
    if not linking:
        return ()
    found = []
    for i, node in linking:
        impl = tp.cast(NodeImpl, lookup(type(node)))
        for key, target in tp.cast(tp.Callable, impl.links)(node):
            j = index.get(id(target))
            if j is not None:
                found.append((i, key, j))
    return tuple(found)


def apply_links(links: tuple, objects: tp.Mapping[int, tp.Any] | tp.Sequence) -> None:
    """Re-make the links of a GraphDef between the objects `unflatten` built."""
    for i, key, j in links:
        node = objects[i]
        impl = tp.cast(NodeImpl, lookup(type(node)))
        tp.cast(tp.Callable, impl.set_link)(node, key, objects[j])


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

    def freeze(d: dict) -> State:
        for k, v in d.items():
            if type(v) is dict:
                d[k] = freeze(v)
        return _wrap_state(d)

    return freeze(root)


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


# -- update / pop (the facade's writes) -----------------------------------------
def update(node: tp.Any, *states: tp.Any) -> None:
    """Write the states' leaves into `node` in place.

    Variables get their value (and metadata) set; raw arrays and missing
    attributes are (re)bound on their parent; immutable containers and
    foreign pytrees on the way are rebuilt and set on their parent.
    """
    nested = State.from_flat_path(_flat_leaves(states))
    _update_graph_node(node, nested, ())


def _update_graph_node(node: tp.Any, sub: State, path: Path) -> None:
    impl = tp.cast(NodeImpl, lookup(type(node)))
    current = dict(impl.children(node))
    for key in sub:
        child = current.get(key, _MISSING)
        new = _update_value(child, sub[key], path + (key,))
        if new is not child:
            impl.set_child(node, key, new)


def _update_value(child: tp.Any, value: tp.Any, path: Path, foreign: bool = False) -> tp.Any:
    if isinstance(value, State):
        if child is _MISSING:
            raise ValueError(errors.update_missing_node(path))
        if lookup(type(child)) is not None:
            _update_graph_node(child, value, path)
            return child
        return _rebuild(child, value, path, foreign)
    if isinstance(child, VariableLike):
        if isinstance(value, VariableLike):
            child.set_raw(value.raw_value)
            meta = value.metadata_items()
            if meta != child.metadata_items():
                child.set_metadata_items(meta)
        else:
            child.set_raw(value)
        return child
    if isinstance(value, VariableLike) and foreign:  # boxed only in the State (BoxedDef)
        return value.raw_value
    if isinstance(value, VariableLike):  # a fresh Variable: the State stays unshared
        return type(value).from_parts(value.raw_value, value.metadata_items())
    return value


def _rebuild(container: tp.Any, sub: State, path: Path, foreign: bool = False) -> tp.Any:
    """A copy of a list/tuple/dict/pytree with some children updated."""
    if type(container) in _CONTAINERS:
        pairs = _container_children(container)
        treedef = None
    else:
        found = _pytree_children(container)
        if found is None:
            raise ValueError(errors.update_missing_node(path))
        treedef, pairs = found
        foreign = True  # arrays below a foreign pytree stay raw arrays
    known = {k for k, _ in pairs}
    extra = [k for k in sub if k not in known]
    if extra:
        raise ValueError(errors.update_missing_node(path + (extra[0],)))
    values = [
        _update_value(v, sub[k], path + (k,), foreign) if k in sub else v for k, v in pairs
    ]
    if treedef is not None:
        return treedef.unflatten(values)
    if type(container) is dict:
        return {k: v for (k, _), v in zip(pairs, values)}
    if type(container) is list:
        container[:] = values
        return container
    return tuple(values)


def pop(node: tp.Any, *filters: filterlib.Filter) -> tp.Any:
    """Remove the Variables matching `filters` from `node`; return them as State(s)."""
    _, pairs = flatten(node, copy=False)
    states = _partition(pairs, filters, exhaustive=False)
    # Find every parent before deleting anything (nothing changes on error),
    # then delete the last paths first so list indices do not shift.
    targets = []
    for s in states:
        for path, _ in s.flat_state():
            parent = _get_path(node, path[:-1])
            impl = lookup(type(parent))
            if impl is None and type(parent) in (dict, list):
                impl = _IN_PLACE  # plain dicts and lists lose the entry in place
            if impl is None:
                raise ValueError(errors.cannot_pop(path))
            targets.append((path, parent, impl))
    for path, parent, impl in sorted(targets, key=lambda t: _path_order(t[0]), reverse=True):
        impl.del_child(parent, path[-1])
    return states[0] if len(states) == 1 else states


class _InPlace:
    @staticmethod
    def del_child(container: tp.Any, key: tp.Any) -> None:
        del container[key]


_IN_PLACE = _InPlace()


def _get_path(node: tp.Any, path: Path) -> tp.Any:
    for key in path:
        node = dict(children_of(node))[key]
    return node


# -- iteration and maps --------------------------------------------------------------
def iter_graph(node: tp.Any) -> tp.Iterator[tuple[Path, tp.Any]]:
    """Yield (path, value) for every node and leaf, children before parents.

    Each shared object is visited once. The children of a node are listed
    before they are visited, so setting attributes of the node a loop just
    received (as in model surgery) is safe.
    """
    seen: set[int] = set()

    def visit(x: tp.Any, path: Path) -> tp.Iterator[tuple[Path, tp.Any]]:
        if type(x) is DataLeaf:
            x = x.value
        if isinstance(x, VariableLike) or lookup(type(x)) is not None:
            if id(x) in seen:
                return
            seen.add(id(x))
        for k, child in children_of(x):
            yield from visit(child, path + (k,))
        yield path, x

    yield from visit(node, ())


def find_duplicates(node: tp.Any) -> list[list[Path]]:
    """Groups of paths that reach the same Variable or graph node."""
    found: dict[int, list[Path]] = {}

    def visit(x: tp.Any, path: Path) -> None:
        if isinstance(x, VariableLike) or lookup(type(x)) is not None:
            paths = found.setdefault(id(x), [])
            paths.append(path)
            if len(paths) > 1:
                return
        for k, child in children_of(x):
            visit(child, path + (k,))

    visit(node, ())
    return [paths for paths in found.values() if len(paths) > 1]


def recursive_map(f: tp.Callable[[Path, tp.Any], tp.Any], node: tp.Any) -> tp.Any:
    """A copy of `node` where every value is replaced by `f(path, value)`,
    children before parents (the parent receives its mapped children).
    The original graph is not modified; sharing is preserved."""
    node = clone(node)
    done: dict[int, tp.Any] = {}

    def visit(x: tp.Any, path: Path) -> tp.Any:
        identity = isinstance(x, VariableLike) or lookup(type(x)) is not None
        if identity and id(x) in done:
            return done[id(x)]
        impl = lookup(type(x))
        if impl is not None:
            done[id(x)] = x  # cycles see the node itself
            for k, child in list(impl.children(x)):
                new = visit(child, path + (k,))
                if new is not child:
                    impl.set_child(x, k, new)
        elif type(x) in _CONTAINERS and not isinstance(x, VariableLike):
            items = [(k, visit(c, path + (k,))) for k, c in _container_children(x)]
            x = dict(items) if type(x) is dict else type(x)(v for _, v in items)
        result = f(path, x)
        if identity:
            done[id(x)] = result
        return result

    return visit(node, ())


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
