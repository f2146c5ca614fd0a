"""The one walk: `walk_graph` visits an object graph once, in pre-order, and writes
its GraphDef as a flat program of op records (see `ops.py`); `program.py`
runs a program back.

For each value met: a Variable or graph node already seen becomes a
`SharedOp`; a Variable a `VariableOp` (its value goes to the leaves); an
array an `ArrayOp`; a graph node a `NodeOp` followed by its children; a list,
tuple or dict a `ContainerOp`; another JAX pytree a `PytreeOp`; anything
else a `StaticOp`. The State is built alongside: one dict per node holding
a leaf somewhere below it.
"""

from __future__ import annotations

import typing as tp

import jax

from nnxfn.core.graphdef import GraphDef
from nnxfn.core.kinds import (
    ARRAY_TYPES,
    K_AREF,
    K_ARRAY,
    K_CONT,
    K_NODE,
    K_STATIC,
    K_VAR,
    kind_of_type,
    pytree_children,
)
from nnxfn.core.links import find_links
from nnxfn.core.ops import (
    ARRAY_OP,
    MUTABLE_REF_OP,
    OWNING_OPS,
    BoxedOp,
    ContainerOp,
    NodeOp,
    Op,
    PytreeOp,
    SameRefOp,
    SharedOp,
    StaticOp,
    VariableOp,
)
from nnxfn.core.registry import IMPLS, KINDS, NodeImpl, foreign_leaf_type, key_order, lookup
from nnxfn.core.state import State, wrap as wrap_state
from nnxfn.core.variable_like import DataLeaf

Key = tp.Hashable
Path = tuple[Key, ...]
StateDict = dict[Key, object]


_new = tuple.__new__  # makes an op record without a Python-level call (the walk's hot path)


class Walked(tp.NamedTuple):
    """What `walk_graph` returns."""

    graphdef: GraphDef
    state: tp.Any  # the State (the leaf itself for a leaf root; None for a static root)
    leaves: list[tp.Any]  # in GraphDef order


class _Frame:
    """An open node, container or pytree of the walk: its children still to
    visit, the State dict of its leaves, its path (when paths are asked
    for), the foreign pytree types above it, the pytree itself (for a
    pytree) and the number of its first op."""

    __slots__ = ("children", "state", "prefix", "foreign", "pytree", "start")

    def __init__(
        self,
        children: tp.Iterator[tuple[Key, object]],
        prefix: Path | None,
        foreign: tuple[type, ...],
        pytree: object,
        start: int,
    ) -> None:
        self.children = children
        self.state: StateDict = {}
        self.prefix = prefix
        self.foreign = foreign
        self.pytree = pytree
        self.start = start


class _Walk:
    """One run of `walk_graph`: the ops, leaves and optional outputs written so far."""

    def __init__(
        self,
        copy: bool,
        paths: list[Path] | None,
        objects: list[object] | None,
        containers: list[object] | None,
        whole_pytrees: dict[Path, object] | None,
    ) -> None:
        self.copy = copy
        self.ops: list[Op] = []
        self.leaves: list[tp.Any] = []
        self.paths = paths
        self.objects = objects
        self.containers = containers
        self.whole_pytrees = whole_pytrees
        self.index: dict[int, int] = {}  # id -> object index of Variables and graph nodes
        self.refs: dict[int, int] = {}  # id -> number of the bare jax.Refs (in pre-order)
        self.linking: list[tuple[int, object]] = []  # (index, node) of nodes with links
        self.alive: list[object] = []  # every child sequence walked, so ids stay unique
        self.trail: list[Key] = []  # the keys of the open frames below the root
        self.parents: list[tuple[StateDict, Key]] = []  # (parent dict, key) per frame above the first

    def run(self, node: object) -> StateDict:
        """Walk `node`; the State dict of the root's slot (key 0)."""
        kinds = KINDS
        seen = self.index.setdefault
        ops, leaves, paths = self.ops, self.leaves, self.paths
        add_object = self.objects.append if self.objects is not None else None
        parents, trail = self.parents, self.trail
        copy = self.copy
        root = _Frame(iter(((0, node),)), None if paths is None else (), (), None, 0)
        self.alive.append(node)
        stack = [root]
        while stack:
            frame = stack[-1]
            d = frame.state
            for k, v in frame.children:
                t = type(v)
                kind = kinds.get(t)
                if kind is None:
                    kind = kind_of_type(t)
                child: _Frame | None
                if kind == K_VAR or kind == K_NODE:  # has identity: a back-reference if seen
                    n = len(self.index)
                    i = seen(id(v), n)
                    if i != n:
                        ops.append(_new(SharedOp, (i,)))
                        continue
                    if add_object is not None:
                        add_object(v)
                    if kind == K_VAR:  # the leaf: the Variable (or a copy)
                        meta = v.metadata_items()  # type: ignore[attr-defined]  # a VariableLike
                        ops.append(_new(VariableOp, (t, meta)))
                        leaves.append(t.from_parts(v.raw_value, meta) if copy else v)  # type: ignore[attr-defined]  # as above
                        d[k] = leaves[-1]
                        if paths is not None:
                            paths.append(frame.prefix + (k,))  # type: ignore[operator]  # set with paths
                        continue
                    child = self.open_node(v, t, n, k, frame)
                elif kind == K_ARRAY:
                    self.array_leaf(v, k, frame)
                    continue
                elif kind == K_STATIC:
                    ops.append(_new(StaticOp, (v,)))
                    continue
                elif kind == K_AREF:
                    self.ref_leaf(v, k, frame)
                    continue
                elif kind == K_CONT:
                    child = self.open_container(v, t, k, frame)
                else:
                    child = self.other(v, t, k, frame)
                    if child is None:
                        continue
                stack.append(child)
                parents.append((d, k))
                trail.append(k)
                break
            else:  # this frame is done: hang its State on its parent
                stack.pop()
                if frame.pytree is not None:
                    self.note_pytree(frame)
                if parents:
                    parent, key = parents.pop()
                    trail.pop()
                    if d:
                        parent[key] = wrap_state(d)
        return root.state

    # -- leaves ---------------------------------------------------------------------
    def emit(self, op: Op, x: object, k: Key, frame: _Frame) -> None:
        """Record a leaf: its op, the leaf, its place in the State (and path)."""
        self.ops.append(op)
        self.leaves.append(x)
        frame.state[k] = x
        if frame.prefix is not None:
            assert self.paths is not None
            self.paths.append(frame.prefix + (k,))

    def array_leaf(self, v: object, k: Key, frame: _Frame, foreign: bool = True) -> None:
        """A raw array, boxed if a foreign pytree above it asks (see `registry`)."""
        above = frame.foreign if foreign else ()
        boxed = foreign_leaf_type((*self.trail[1:], k), v, above) if above else None
        if boxed is None:
            self.emit(ARRAY_OP, v, k, frame)
        else:
            self.emit(BoxedOp(boxed), boxed.from_parts(v, ()), k, frame)

    def ref_leaf(self, v: object, k: Key, frame: _Frame) -> None:
        """A bare `jax.Ref`: one leaf however many paths reach it."""
        number = self.refs.get(id(v))
        if number is None:
            self.refs[id(v)] = len(self.refs)
            self.emit(MUTABLE_REF_OP, v, k, frame)
        else:
            self.ops.append(SameRefOp(number))

    # -- nodes with children ----------------------------------------------------------
    def child_frame(self, keys: tuple[Key, ...], values: tp.Sequence[object], k: Key, frame: _Frame,
                    foreign: tuple[type, ...], pytree: object) -> _Frame:  # fmt: skip
        self.alive.append(values)
        prefix = None if frame.prefix is None else frame.prefix + (k,)
        return _Frame(iter(zip(keys, values)), prefix, foreign, pytree, len(self.ops))

    def open_node(self, v: object, t: type, n: int, k: Key, frame: _Frame) -> _Frame:
        """A graph node seen for the first time (object index `n`)."""
        impl = IMPLS.get(t) or _impl(t)
        if impl.links is not None:
            self.linking.append((n, v))
        if impl.parts is not None:
            static, keys, values = impl.parts(v)
        else:
            pairs = list(impl.children(v))
            static, keys, values = impl.static(v), tuple([key for key, _ in pairs]), [c for _, c in pairs]
        self.ops.append(NodeOp(t, static, keys, impl))
        self.alive.append(values)
        prefix = None if frame.prefix is None else frame.prefix + (k,)
        return _Frame(iter(zip(keys, values)), prefix, (), None, len(self.ops))

    def open_container(self, v: tp.Any, t: type, k: Key, frame: _Frame) -> _Frame:
        """A list, tuple or dict."""
        if self.containers is not None and t is not tuple:
            self.containers.append(v)
        if t is dict:
            keys: tuple[Key, ...] = tuple(sorted(v, key=key_order))
            values = [v[j] for j in keys]
        else:
            keys, values = tuple(range(len(v))), v
        self.ops.append(ContainerOp(t, keys))
        return self.child_frame(keys, values, k, frame, frame.foreign, None)

    def other(self, v: object, t: type, k: Key, frame: _Frame) -> _Frame | None:
        """A value of no fixed kind: a declared leaf, a tracer, a foreign
        pytree (its frame is returned) or a static value."""
        if t is DataLeaf:  # a value its node declares a leaf (`nnx.data(1)`)
            assert isinstance(v, DataLeaf)
            self.array_leaf(v.value, k, frame, foreign=False)
        elif isinstance(v, ARRAY_TYPES):  # a tracer
            if isinstance(v, jax.Ref):
                self.ref_leaf(v, k, frame)
            else:
                self.array_leaf(v, k, frame)
        else:
            found = pytree_children(v)
            if found is None:
                self.ops.append(StaticOp(v))  # hashed by contents if unhashable
                return None
            keys = tuple([key for key, _ in found.children])
            self.ops.append(PytreeOp(found.treedef, keys))
            values = [c for _, c in found.children]
            return self.child_frame(keys, values, k, frame, frame.foreign + (t,), v)
        return None

    def note_pytree(self, frame: _Frame) -> None:
        """A foreign pytree is done: note it for the caches (see `walk_graph`)."""
        if self.whole_pytrees is not None or self.containers is not None:
            owning = any(isinstance(op, OWNING_OPS) for op in self.ops[frame.start :])
            if self.whole_pytrees is not None and not owning and len(frame.foreign) == 1:
                self.whole_pytrees[tuple(self.trail[1:])] = frame.pytree
            if self.containers is not None and owning and mutable(frame.pytree):
                self.containers.append(frame.pytree)


def _impl(t: type) -> NodeImpl:
    impl = lookup(t)
    assert impl is not None, t
    return impl


def walk_graph(
    node: object,
    *,
    copy: bool = True,
    paths: list[Path] | None = None,
    objects: list[object] | None = None,
    containers: list[object] | None = None,
    whole_pytrees: dict[Path, object] | None = None,
) -> Walked:
    """Walk `node` once (iteratively: no recursion limit): its GraphDef, its
    State (the leaf itself for a leaf root) and the leaves in GraphDef order.

    A Variable or graph node reachable by several paths appears once, at its
    first path in canonical order. Variables are copied unless `copy=False`.
    Optional outputs: `paths` gets each leaf's path; `objects` the live graph
    nodes and Variables in object-index order; `containers` every list/dict
    walked and every mutable foreign pytree holding a Variable or graph node
    (caches use them to notice in-place edits); `whole_pytrees` gets
    {path: pytree} for every outermost foreign pytree holding neither."""
    w = _Walk(copy, paths, objects, containers, whole_pytrees)
    top = w.run(node)
    if paths is not None:
        paths[:] = [p[1:] for p in paths]  # drop the root's key
    links = find_links(w.linking, w.index) if w.linking else ()
    root = top.get(0)
    if root is None and isinstance(w.ops[0], (NodeOp, ContainerOp, PytreeOp)):
        root = wrap_state({})
    return Walked(GraphDef.from_ops(w.ops, len(w.leaves), links), root, w.leaves)


def mutable(x: object) -> bool:
    """Whether a foreign pytree may be edited in place (tuples, States and frozen
    dataclasses such as Equinox modules cannot, short of `object.__setattr__`)."""
    if isinstance(x, (tuple, State)):
        return False
    params = getattr(type(x), "__dataclass_params__", None)
    return not (params is not None and params.frozen)
