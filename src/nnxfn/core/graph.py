"""The one flattening implementation and everything built on it.

`flatten` walks an object graph once and returns a GraphDef plus the leaves
in canonical path order; `unflatten` builds fresh objects from a GraphDef and
leaves without calling any `__init__`. `split`/`merge`/`state`/`graphdef`/
`clone` are thin wrappers; `update` and `pop` are the facade's writes.
"""

from __future__ import annotations

import types
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
from nnxfn.core.registry import _CACHE as _IMPLS
from nnxfn.core.registry import KINDS, NodeImpl, foreign_leaf_type, key_order, lookup
from nnxfn.core.state import State, wrap as _wrap_state
from nnxfn.core.state import _set_flat
from nnxfn.core.variable_like import VariableLike

Path = tuple[tp.Any, ...]
Leaf = tp.Any
_ARRAY_TYPES = (jax.Array, np.ndarray, np.generic, jax.ShapeDtypeStruct)
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
    return GraphDef(root, len(leaves)), leaves


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
    return out


def _path_order(path: Path) -> tuple:
    return tuple(key_order(k) for k in path)


# -- split / merge / state ------------------------------------------------------
def _partition(pairs: list[tuple[Path, Leaf]], filters: tuple, exhaustive: bool) -> tuple[State, ...]:
    preds = filterlib.check_filters(filters)
    buckets: list[list] = [[] for _ in preds]
    unmatched = []
    for path, leaf in pairs:
        for i, pred in enumerate(preds):
            if pred(path, leaf):
                buckets[i].append((path, leaf))
                break
        else:
            unmatched.append(path)
    if exhaustive and unmatched:
        raise ValueError(errors.non_exhaustive_split(unmatched))
    return tuple(State.from_flat_path(b) for b in buckets)


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
            return _unflatten_ops(graphdef.ops, leaves)
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
    preds = filterlib.check_filters(filters)
    buckets: list[list] = [[] for _ in preds]
    unmatched = []
    for pos, (path, leaf) in enumerate(zip(paths, leaves)):
        for i, pred in enumerate(preds):
            if pred(path, leaf):
                buckets[i].append(pos)
                break
        else:
            unmatched.append(path)
    if exhaustive and unmatched:
        raise ValueError(errors.non_exhaustive_split(unmatched))
    token = [len(preds)]
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
            if impl is None:
                raise ValueError(errors.cannot_pop(path))
            targets.append((path, parent, impl))
    for path, parent, impl in sorted(targets, key=lambda t: _path_order(t[0]), reverse=True):
        impl.del_child(parent, path[-1])
    return states[0] if len(states) == 1 else states


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
            out.append((path, x))
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


# -- fast paths -------------------------------------------------------------------
# `split`/`state` without filters and `merge` of the State that `split` returned
# skip paths altogether. The GraphDef is first a flat *program* in pre-order
# (its records are built from it only when read, see `GraphDef.root`):
#
#   (OP_VAR, type, metadata)        a Variable; takes the next leaf and index
#   (OP_ARRAY,)                     a raw array; takes the next leaf
#   (OP_BOXED, type)                a boxed leaf of a foreign pytree
#   (OP_STATIC, value)
#   (OP_REF, index)                 an object seen before
#   (OP_NODE, type, static, keys, impl)  a graph node (takes the next index),
#                                   then one op sequence per key
#   (OP_CONT, type, keys)           a list/tuple/dict, then its children
#   (OP_PYTREE, treedef, keys)      a foreign pytree, then its children
#
# Indices are given in pre-order, as `flatten` does. The fast walk handles
# graph nodes, Variables, arrays, plain containers and static values; for
# anything else (foreign pytrees, unhashable statics, ...) it gives up and the
# general `flatten` runs, so the errors and edge cases stay in one place.
OP_VAR, OP_ARRAY, OP_BOXED, OP_STATIC, OP_REF, OP_NODE, OP_CONT, OP_PYTREE = range(8)
_ARRAY_OP = (OP_ARRAY,)
_K_VAR, _K_NODE, _K_ARRAY, _K_CONT, _K_STATIC, _K_OTHER = range(6)
_LEAF_TYPES = (
    type(None), int, float, str, bool, complex,
    types.FunctionType, types.BuiltinFunctionType, np.dtype,
)


class _Fallback(Exception):
    """The fast walk met something only the general `flatten` handles."""


def _kind(t: type) -> int:
    """How the fast walk treats instances of `t` (same order as `flatten`)."""
    if issubclass(t, VariableLike):
        kind = _K_VAR
    elif lookup(t) is not None:
        kind = _K_NODE
    elif issubclass(t, jax.core.Tracer):  # `isinstance(x, jax.Array)` depends on x
        kind = _K_OTHER
    elif issubclass(t, _ARRAY_TYPES):
        kind = _K_ARRAY
    elif t in _CONTAINERS:
        kind = _K_CONT
    elif issubclass(t, _LEAF_TYPES[:6]) or t in _LEAF_TYPES:
        kind = _K_STATIC  # never a pytree node, always hashable
    else:
        kind = _K_OTHER
    KINDS[t] = kind
    return kind


def _flatten_fast(
    node: tp.Any, paths: list | None = None, copy: bool = True
) -> tuple[GraphDef, State, list] | None:
    """`split(node)` without paths: (graphdef, state, leaves in GraphDef order),
    or None if `node` needs the general `flatten`. Variables are copied unless
    `copy=False`. If `paths` is a list, the path of each leaf is appended to it."""
    kinds = KINDS
    impls = _IMPLS
    index: dict[int, int] = {}  # id -> GraphDef index of Variables and graph nodes
    seen = index.setdefault
    alive: list = [node]  # every child sequence walked, so ids stay unique
    keep = alive.append
    ops: list = []
    leaves: list = []
    add_op = ops.append
    add_leaf = leaves.append

    def node_parts(x: tp.Any, impl: NodeImpl) -> tuple[tp.Any, tuple, tp.Any]:
        pairs = list(impl.children(x))
        return impl.static(x), tuple([k for k, _ in pairs]), [v for _, v in pairs]

    def visit_children(keys: tuple, vals: tp.Iterable, prefix: tuple | None) -> dict:
        d = {}
        for k, v in zip(keys, vals):
            t = type(v)
            kind = kinds.get(t)
            if kind is None:
                kind = _kind(t)
            if kind == _K_VAR:
                n = len(index)
                i = seen(id(v), n)
                if i != n:
                    add_op((OP_REF, i))
                    continue
                meta = v.metadata_items()
                add_op((OP_VAR, t, meta))
                leaf = t.from_parts(v.raw_value, meta) if copy else v
                add_leaf(leaf)
                d[k] = leaf
                if prefix is not None:
                    add_path(prefix + (k,))
            elif kind == _K_NODE:
                n = len(index)
                i = seen(id(v), n)
                if i != n:
                    add_op((OP_REF, i))
                    continue
                impl = impls[t]
                if impl.parts is not None:
                    static, sub_keys, sub_vals = impl.parts(v)
                else:
                    static, sub_keys, sub_vals = node_parts(v, impl)
                keep(sub_vals)
                add_op((OP_NODE, t, static, sub_keys, impl))
                sub = visit_children(sub_keys, sub_vals, None if prefix is None else prefix + (k,))
                if sub:
                    d[k] = _wrap_state(sub)
            elif kind == _K_ARRAY:
                add_op(_ARRAY_OP)
                add_leaf(v)
                d[k] = v
                if prefix is not None:
                    add_path(prefix + (k,))
            elif kind == _K_STATIC:
                add_op((OP_STATIC, v))
            elif kind == _K_CONT:
                if t is dict:
                    sub_keys = tuple(sorted(v, key=key_order))
                    sub_vals = [v[j] for j in sub_keys]
                else:
                    sub_keys = tuple(range(len(v)))
                    sub_vals = v
                add_op((OP_CONT, t, sub_keys))
                keep(sub_vals)
                sub = visit_children(sub_keys, sub_vals, None if prefix is None else prefix + (k,))
                if sub:
                    d[k] = _wrap_state(sub)
            elif isinstance(v, _ARRAY_TYPES):  # a tracer
                add_op(_ARRAY_OP)
                add_leaf(v)
                d[k] = v
                if prefix is not None:
                    add_path(prefix + (k,))
            elif _pytree_children(v) is None and _hashable(v):
                add_op((OP_STATIC, v))
            else:
                raise _Fallback
        return d

    t = type(node)
    kind = kinds.get(t)
    if kind is None:
        kind = _kind(t)
    if kind != _K_NODE and kind != _K_CONT:
        return None
    add_path = paths.append if paths is not None else None
    try:  # the root as the only child of a container: its State is the root's
        d = visit_children((0,), (node,), None if paths is None else ())
    except _Fallback:
        return None
    if paths is not None:
        paths[:] = [p[1:] for p in paths]  # drop the root's key
    return GraphDef._from_ops(ops, len(leaves)), d.get(0) or _wrap_state({}), leaves


def _hashable(x: tp.Any) -> bool:
    try:
        hash(x)
    except TypeError:
        return False
    return True


class LeafMismatch(Exception):
    """A leaf does not fit its GraphDef position (see `unflatten_leaves`)."""


def unflatten_leaves(graphdef: GraphDef, leaves: tp.Sequence, *, copy: bool = True) -> tp.Any:
    """`unflatten` with the leaves given in GraphDef order (as `flatten` lists
    them) instead of by path: no path is built or looked up. Raises
    `LeafMismatch` (no message) if a leaf does not fit; the caller then runs
    the path-based `unflatten` for the error that names the path."""
    if len(leaves) != graphdef.num_leaves:
        raise LeafMismatch
    return _unflatten_ops(graphdef.ops, leaves, copy=copy, trusted=False)


def _unflatten_ops(
    ops: list, leaves: tp.Sequence, *, copy: bool = True, trusted: bool = True
) -> tp.Any:
    """`unflatten` by position. `trusted`: the leaves come from the `split`
    that made `ops` (Variables where `ops` has them), so nothing is checked."""
    next_op = iter(ops).__next__
    next_leaf = iter(leaves).__next__
    objects: list = []
    add_object = objects.append

    def values(n: int) -> list:
        out = []
        for _ in range(n):
            op = next_op()
            code = op[0]
            if code == OP_VAR:
                leaf = next_leaf()
                if trusted:  # the State's copy of the Variable
                    v = op[1].from_parts(leaf.raw_value, leaf.metadata_items())
                elif isinstance(leaf, VariableLike):
                    if not isinstance(leaf, op[1]):
                        raise LeafMismatch
                    v = op[1].from_parts(leaf.raw_value, leaf.metadata_items()) if copy else leaf
                else:
                    v = op[1].from_parts(leaf, op[2])
                add_object(v)
            elif code == OP_NODE:
                _, t, static, keys, impl = op
                v = impl.create_empty(t, static)
                add_object(v)
                vals = values(len(keys))  # children may refer back to `v`
                if impl.fill is not None:
                    impl.fill(v, keys, vals)
                else:
                    set_child = impl.set_child
                    for k, child in zip(keys, vals):
                        set_child(v, k, child)
            elif code == OP_ARRAY:
                v = next_leaf()
                if not trusted and isinstance(v, VariableLike):
                    v = v.raw_value
            elif code == OP_STATIC:
                v = op[1]
            elif code == OP_REF:
                v = objects[op[1]]
            elif code == OP_CONT:
                t, keys = op[1], op[2]
                vals = values(len(keys))
                if t is dict:
                    v = dict(zip(keys, vals))
                else:
                    v = vals if t is list else t(vals)
            elif code == OP_PYTREE:
                v = op[1].unflatten(values(len(op[2])))
            else:  # OP_BOXED
                leaf = next_leaf()
                v = leaf.raw_value if isinstance(leaf, VariableLike) else leaf
            out.append(v)
        return out

    return values(1)[0]


def root_from_ops(ops: list) -> tp.Any:
    """The tree of GraphDef records described by a flat program."""
    next_op = iter(ops).__next__
    count = [0]

    def build(op: tuple) -> tp.Any:
        code = op[0]
        if code == OP_VAR:
            i = count[0]
            count[0] += 1
            return VariableDef(op[1], i, op[2])
        if code == OP_ARRAY:
            return ARRAY
        if code == OP_STATIC:
            return StaticDef(op[1])
        if code == OP_REF:
            return Ref(op[1])
        if code == OP_BOXED:
            return BoxedDef(op[1])
        if code == OP_NODE:
            i = count[0]
            count[0] += 1
            return NodeDef(op[1], i, op[2], tuple([(k, build(next_op())) for k in op[3]]))
        kids = tuple([(k, build(next_op())) for k in op[2]])
        return ContainerDef(op[1], kids) if code == OP_CONT else PytreeDef(op[1], kids)

    return build(next_op())


def ops_from_root(root: tp.Any) -> list:
    """The flat program of a tree of GraphDef records."""
    ops: list = []

    def walk(d: tp.Any) -> None:
        if isinstance(d, VariableDef):
            ops.append((OP_VAR, d.type, d.metadata))
        elif isinstance(d, ArrayDef):
            ops.append(_ARRAY_OP)
        elif isinstance(d, StaticDef):
            ops.append((OP_STATIC, d.value))
        elif isinstance(d, Ref):
            ops.append((OP_REF, d.index))
        elif isinstance(d, BoxedDef):
            ops.append((OP_BOXED, d.type))
        else:
            keys = tuple(k for k, _ in d.children)
            if isinstance(d, NodeDef):
                ops.append((OP_NODE, d.type, d.static, keys, lookup(d.type)))
            elif isinstance(d, ContainerDef):
                ops.append((OP_CONT, d.type, keys))
            else:
                ops.append((OP_PYTREE, d.treedef, keys))
            for _, child in d.children:
                walk(child)

    walk(root)
    return ops
