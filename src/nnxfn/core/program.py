"""Running a GraphDef's ops back into objects (`walker.py` writes them).

Three verbs, each returning a `Built` (the root, the graph nodes and
Variables by object index, the lists/dicts/pytrees made):

- `build`: a new graph from the leaves of the State `split` returned with
  the GraphDef (trusted: nothing is checked). `merge` comes here.
- `build_checked`: a new graph from leaves of any origin, in GraphDef
  order; a leaf that does not fit raises `LeafMismatch`. `unflatten` comes here.
- `commit_into`: the leaves written into the caller's existing objects (`reuse`:
  object index -> object), keeping every list, dict, tuple and pytree whose
  children come out the same objects. Transforms commit their results and
  `update` writes a partial State this way.

`leaf_ops` and `flatten_like` read a program with paths.
"""

from __future__ import annotations

import dataclasses
import operator
import typing as tp
from itertools import islice

from nnxfn.core.graphdef import GraphDef
from nnxfn.core.kinds import children_of, pytree_children
from nnxfn.core.links import apply_links
from nnxfn.core.ops import (
    LEAF_OPS,
    PARENT_OPS,
    ArrayOp,
    BoxedOp,
    ContainerOp,
    LeafNodesOp,
    MutableRefOp,
    NodeOp,
    Op,
    PlanOp,
    PytreeOp,
    SameRefOp,
    SharedOp,
    StaticOp,
    VariableOp,
    child_keys,
)
from nnxfn.core.registry import NodeImpl
from nnxfn.core.variable_like import DataLeaf, VariableLike

Key = tp.Hashable
Path = tuple[Key, ...]
Leaf = tp.Any  # an array, a Variable, or any other leaf of a State


class LeafMismatch(Exception):
    """A leaf does not fit its GraphDef position (see `build_checked`)."""


class Built(tp.NamedTuple):
    """What running a GraphDef gives."""

    root: tp.Any  # the object graph built
    objects: list[object]  # the graph nodes and Variables, by object index
    made: list[object]  # every list, dict and foreign pytree made (not tuples)


def build(graphdef: GraphDef, leaves: tp.Sequence[Leaf], *, copy: bool = False) -> Built:
    """A new graph from the leaves of the State `split` returned with
    `graphdef`, in GraphDef order: its own Variables (copies with `copy=True`)."""
    return _Run(graphdef, leaves, _COPY if copy else _SHARE).run()


def build_checked(
    graphdef: GraphDef,
    leaves: tp.Sequence[Leaf],
    *,
    copy: bool = True,
    known: tp.Sequence[object] = (),
    adopt: bool = False,
    whole: tp.Container[int] = (),
) -> Built:
    """A new graph from `leaves` of any origin (Variables or raw values), in
    GraphDef order; raises `LeafMismatch` (no message) if one does not fit.

    `known`: objects an earlier run made (object indices go on after them).
    `adopt`: Variables used as they are (`copy=False`) are told they join a
    new graph (`VariableLike.adopt`). `whole`: ids of `PytreeOp`s given as
    one leaf (see `walk_graph(whole_pytrees=...)`)."""
    mode = _Mode(copy=copy, trusted=False, adopt=adopt, whole=whole)
    return _Run(graphdef, leaves, mode, list(known)).run()


def commit_into(
    graphdef: GraphDef,
    leaves: tp.Sequence[Leaf],
    reuse: tp.Mapping[int, object],
    *,
    copy: bool = True,
    known: tp.Sequence[object] = (),
    whole: tp.Container[int] = (),
    current: object = None,
    adopt: bool = False,
) -> Built:
    """`leaves` written into the caller's objects: the object of index `i`
    in `reuse` is updated in place (Variables get value and metadata, nodes
    lose children not in the GraphDef) instead of made. A list, dict, tuple
    or pytree that a reused node (or `current`, the existing root) holds is
    kept if its children come out the same objects; with `current` a changed
    list or dict is edited in place. See `build_checked` for the rest."""
    mode = _Mode(copy=copy, trusted=False, adopt=adopt, reuse=reuse, whole=whole, current=current)
    return _Run(graphdef, leaves, mode, list(known)).run()


def unflatten_leaves(
    graphdef: GraphDef, leaves: tp.Sequence[Leaf], *, copy: bool = True, objects: list[Leaf] | None = None
) -> Leaf:
    """The root `build_checked` makes, checking first that there are as many
    leaves as the GraphDef takes; `objects`, if given, is extended with the
    graph nodes and Variables made. Raises `LeafMismatch` (no message); the
    caller then runs the path-based `unflatten` for the error that names the path."""
    if len(leaves) != graphdef.num_leaves:
        raise LeafMismatch
    built = build_checked(graphdef, leaves, copy=copy)
    if objects is not None:
        objects.extend(built.objects)
    return built.root


# -- the interpreter --------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, slots=True)
class _Mode:
    """How `_Run` treats leaves and objects (set by the verbs above)."""

    copy: bool
    trusted: bool  # the leaves are `split`'s own: nothing checked
    adopt: bool = False
    reuse: tp.Mapping[int, object] | None = None
    whole: tp.Container[int] = ()
    current: object = None


_SHARE = _Mode(copy=False, trusted=True)
_COPY = _Mode(copy=True, trusted=True)


class _Open:
    """A node, container or pytree being built: its op (None for the root's
    slot), its object (for a container: the existing one it may keep), how
    many children are still to come, their values so far, whether the node
    is a reused one, and the children of the object it may keep."""

    __slots__ = ("op", "obj", "left", "values", "reused", "kept")

    def __init__(
        self, op: NodeOp | ContainerOp | PytreeOp | None, obj: object, left: int, reused: bool,
        kept: dict[Key, object] | None,
    ) -> None:  # fmt: skip
        self.op = op
        self.obj = obj
        self.left = left
        self.values: list[object] = []
        self.reused = reused
        self.kept = kept


class _Run:
    """One run of a GraphDef's plan over its leaves."""

    def __init__(
        self, graphdef: GraphDef, leaves: tp.Sequence[Leaf], mode: _Mode, objects: list[object] | None = None
    ) -> None:
        self.graphdef = graphdef
        self.plan = iter(graphdef.plan)
        self.leaf_iter = iter(leaves)
        self.next_leaf = self.leaf_iter.__next__
        self.mode = mode
        self.reuse = mode.reuse
        # The State's own Variables go into the new graph:
        self.shared = mode.trusted and not mode.copy and not mode.reuse
        self.objects: list[object] = [] if objects is None else objects
        self.refs: list[object] = []  # the bare jax.Refs, in pre-order (SameRefOp refers to them)
        self.made: list[object] = []

    def run(self) -> Built:
        """Run the plan: the root and what was made."""
        current = self.mode.current
        root = _Open(None, None, 1, False, None if current is None else {0: current})
        stack = [root]
        next_op = self.plan.__next__
        single = self.single
        keeping = bool(self.reuse) or current is not None
        whole = self.mode.whole
        while True:
            frame = stack[-1]
            if not frame.left:  # all children read: finish the node/container
                stack.pop()
                if frame.op is None:
                    if self.graphdef.links:
                        apply_links(self.graphdef.links, self.objects)
                    (value,) = root.values
                    return Built(value, self.objects, self.made)
                parent = stack[-1]
                parent.values.append(self.finish(frame))
                parent.left -= 1
                continue
            op = next_op()
            if type(op) is LeafNodesOp:
                made = self.leaf_nodes(op)
                frame.values.extend(made)
                frame.left -= len(made)
                continue
            if type(op) is NodeOp:
                v, reused = self.open_node(op)
                stack.append(_Open(op, v, len(op.keys), reused, None))
                continue
            if type(op) is PytreeOp and id(op) in whole:
                v = self.next_leaf()
                _skip(self.plan, len(op.keys))
            elif type(op) is ContainerOp or type(op) is PytreeOp:
                old = self.existing(frame) if keeping else None
                kept = None if old is None else dict(children_of(old))
                stack.append(_Open(op, old, len(op.keys), False, kept))
                continue
            else:
                v = single(op)  # type: ignore[arg-type]  # LeafNodesOp was taken above
            frame.values.append(v)
            frame.left -= 1

    # -- single ops -----------------------------------------------------------------
    def single(self, op: Op) -> object:
        """The value of one Variable/array/static/back-reference op."""
        if type(op) is VariableOp:
            return self.variable(op)
        if type(op) is ArrayOp:
            v = self.next_leaf()
            if not self.mode.trusted and isinstance(v, VariableLike):
                v = v.raw_value
            return v
        if type(op) is BoxedOp:  # boxed only in the State: the graph holds the raw value
            v = self.next_leaf()
            return v.raw_value if isinstance(v, VariableLike) else v
        if type(op) is StaticOp:
            return op.value
        if type(op) is MutableRefOp:
            v = self.next_leaf()
            if not self.mode.trusted and isinstance(v, VariableLike):
                v = v.raw_value
            self.refs.append(v)
            return v
        if type(op) is SameRefOp:
            return self.refs[op.number]
        assert type(op) is SharedOp
        return self.objects[op.object_index]

    def variable(self, op: VariableOp) -> object:
        """The Variable of a VariableOp: the leaf, a copy, or the reused one updated."""
        leaf: Leaf = self.next_leaf()
        mode = self.mode
        if mode.trusted:  # the Variable `split` put in the State
            v = op.variable_type.from_parts(leaf.raw_value, leaf.metadata_items()) if mode.copy else leaf
            self.objects.append(v)
            return v
        boxed = isinstance(leaf, VariableLike)
        if boxed and not isinstance(leaf, op.variable_type):
            raise LeafMismatch
        value, meta = (leaf.raw_value, leaf.metadata_items()) if boxed else (leaf, op.metadata)
        v = self.reuse.get(len(self.objects)) if self.reuse else None
        if v is not None:  # commit in place
            assert isinstance(v, VariableLike)
            if leaf is not v:
                v.set_raw(value)
                if v.metadata_items() != meta:
                    v.set_metadata_items(meta)
        elif boxed and not mode.copy:
            v = leaf
            if mode.adopt:
                v.adopt()
        else:
            v = op.variable_type.from_parts(value, meta)
        self.objects.append(v)
        return v

    # -- graph nodes ------------------------------------------------------------------
    def open_node(self, op: NodeOp) -> tuple[object, bool]:
        """A new (or, to commit into, the reused) node of a NodeOp; whether reused."""
        v = self.reuse.get(len(self.objects)) if self.reuse else None
        if v is None:
            v = op.impl.create_empty(op.node_type, op.static)
            self.objects.append(v)  # before its children: they may refer back to it
            return v, False
        impl, keep = op.impl, set(op.keys)
        for k in [k for k, _ in impl.children(v) if k not in keep]:
            impl.del_child(v, k)
        self.objects.append(v)
        return v, True

    def leaf_nodes(self, op: LeafNodesOp) -> list[object]:
        """The `count` nodes of a LeafNodesOp, in order."""
        make, node = op.make, op.node
        if make is None or self.reuse:
            out = []
            for _ in range(op.repeat):
                v, reused = self.open_node(node)
                _fill(node.impl, v, node.keys, [self.single(k) for k in op.children], reused)
                out.append(v)
            return out
        if self.shared and op.picker is not None:
            return self.shared_leaf_nodes(op, make)
        objects, single = self.objects, self.single
        at = []
        values = []
        for _ in range(op.repeat):
            at.append(len(objects))
            objects.append(None)  # its index comes before its Variables'
            values.append([single(k) for k in op.children])
        made = make(values)
        for i, v in zip(at, made):
            objects[i] = v
        return made

    def shared_leaf_nodes(self, op: LeafNodesOp, make: tp.Callable[[object], list[object]]) -> list[object]:
        """`leaf_nodes` holding the State's own Variables, as they come, with C-level calls."""
        assert op.picker is not None
        nvars, statics, order = op.picker
        count, objects = op.repeat, self.objects
        start = len(objects)
        new = list(islice(self.leaf_iter, nvars * count))
        block: list[object] = [None] * ((nvars + 1) * count)  # each node's index, then its Variables'
        for j in range(nvars):
            block[1 + j :: nvars + 1] = new[j::nvars]
        objects.extend(block)
        groups: tp.Iterable[tuple[object, ...]] = zip(*[iter(new)] * nvars)
        if statics:
            groups = [order(g + statics) for g in groups]
        made = make(groups)
        objects[start :: nvars + 1] = made
        return made

    # -- containers and pytrees -------------------------------------------------------
    def existing(self, frame: _Open) -> object:
        """What the object of `frame` holds now at the key of its next child
        (None if it is new): a container there may be kept."""
        kids = frame.kept
        if kids is None:
            if not frame.reused:
                return None
            assert type(frame.op) is NodeOp
            kids = frame.kept = dict(frame.op.impl.children(frame.obj))  # a reused node
        if frame.op is None:
            return kids.get(0)
        return kids.get(frame.op.keys[len(frame.values)])

    def finish(self, frame: _Open) -> object:
        """The node, container or pytree of a frame whose children are all read."""
        op, vals = frame.op, frame.values
        if type(op) is NodeOp:
            _fill(op.impl, frame.obj, op.keys, vals, frame.reused)
            return frame.obj
        old = frame.obj
        v: object
        if type(op) is PytreeOp:
            v = op.treedef.unflatten(vals)
        else:
            assert type(op) is ContainerOp
            t = op.container_type
            v = dict(zip(op.keys, vals)) if t is dict else vals if t is list else t(vals)
        if old is not None and _same(old, v):
            return old  # nothing in it changed: the caller's object stays
        if self.mode.current is not None and type(old) is type(v) and (type(v) is list or type(v) is dict):
            return _edit(old, v)
        if type(v) is not tuple:
            self.made.append(v)
        return v


def _same(old: object, new: object) -> bool:
    """`new` has the type, keys (or treedef) and very child objects of `old`."""
    if type(old) is not type(new):
        return False
    if isinstance(new, dict) and isinstance(old, dict):
        return list(old) == list(new) and _all_is(old.values(), new.values())
    if isinstance(new, (list, tuple)) and isinstance(old, (list, tuple)):
        return _all_is(old, new)
    a, b = pytree_children(old), pytree_children(new)
    if a is None or b is None:
        return a is b
    return a.treedef == b.treedef and _all_is([v for _, v in a.children], [v for _, v in b.children])


def _all_is(a: tp.Collection[object], b: tp.Collection[object]) -> bool:
    return len(a) == len(b) and all(map(operator.is_, a, b))


def _edit(old: Leaf, new: Leaf) -> Leaf:
    """`old` (a list or dict) edited in place to hold what `new` holds."""
    if type(old) is list:
        old[:] = new
    else:
        old.clear()
        old.update(new)
    return old


def _fill(
    impl: NodeImpl, node: object, keys: tuple[Key, ...], values: list[object], reused: bool = False
) -> None:
    if impl.fill is not None and not reused:
        impl.fill(node, keys, values)
    else:
        set_child = impl.set_child
        for k, child in zip(keys, values):
            set_child(node, k, child)


def _skip(ops: tp.Iterator[PlanOp], pending: int) -> None:
    """Consume the ops of `pending` sibling subtrees."""
    while pending:
        op = next(ops)
        pending += (0 if isinstance(op, LeafNodesOp) else len(child_keys(op))) - 1


# -- reading a program with paths -------------------------------------------------
class _KeyStack:
    """The path of the op being read: one iterator over child keys (or
    (key, child) pairs) per open node, and the keys so far."""

    __slots__ = ("stack", "keys")

    def __init__(self, first: tp.Iterator[tp.Any]) -> None:
        self.stack = [first]
        self.keys: list[Key] = []  # after the root's placeholder

    def path(self) -> Path:
        return tuple(self.keys[1:])

    def close(self) -> None:
        """The op just read has no children to open: drop its key, and close
        every node whose last child that was."""
        stack, keys = self.stack, self.keys
        keys.pop()
        while stack and operator.length_hint(stack[-1]) == 0:
            stack.pop()
            if keys:
                keys.pop()


def leaf_ops(graphdef: GraphDef, whole: tp.Container[Path] = ()) -> list[tuple[Path, Op]]:
    """(path, op) of every leaf of `graphdef`, in its leaf order (iterative).
    A pytree whose path is in `whole` counts as one leaf (its op is listed)."""
    out: list[tuple[Path, Op]] = []
    ops = iter(graphdef.ops)
    at = _KeyStack(iter((None,)))
    for op in ops:
        at.keys.append(next(at.stack[-1]))
        sub = child_keys(op)
        if isinstance(op, LEAF_OPS):
            out.append((at.path(), op))
        elif type(op) is PytreeOp and whole and at.path() in whole:
            out.append((at.path(), op))
            _skip(ops, len(sub))
            sub = ()
        if sub:
            at.stack.append(iter(sub))
        else:
            at.close()
    return out


def flatten_like(
    graphdef: GraphDef, node: object, whole: tp.Container[Path] = ()
) -> list[tuple[Path, Leaf]] | None:
    """The (path, leaf) pairs of `node` at the leaf positions of `graphdef`, in its
    order, whatever their values (None, bools, tracers, sentinels); None if
    `node` does not have that structure. Used to flatten again an object graph
    that JAX unflattened with non-array leaves (e.g. an `eqx.partition` half),
    which `walk` would read as static values. Foreign pytrees at the paths in
    `whole` are returned whole. Iterative over the program, like `leaf_ops`."""
    out: list[tuple[Path, Leaf]] = []
    ops = iter(graphdef.ops)
    at = _KeyStack(iter(((None, node),)))
    kids: dict[Key, object] = {}
    try:
        for op in ops:
            k, x = next(at.stack[-1])
            at.keys.append(k)
            sub = child_keys(op)
            if type(op) is PytreeOp and at.path() in whole:
                out.append((at.path(), x))
                _skip(ops, len(sub))
                sub = ()
            elif isinstance(op, LEAF_OPS):
                leaf = _leaf_like(op, x)
                if leaf is _NO_FIT:
                    return None
                out.append((at.path(), leaf))
            elif isinstance(op, PARENT_OPS):
                found = _children_like(op, x)
                if found is None:
                    return None
                kids = found
            if sub:
                at.stack.append(iter([(j, kids[j]) for j in sub]))
            else:
                at.close()
    except (LookupError, TypeError):
        return None
    return out


_NO_FIT = object()


def _leaf_like(op: Op, x: Leaf) -> Leaf:
    """The leaf `flatten_like` reads at a leaf op, or `_NO_FIT`."""
    if type(op) is VariableOp:
        return x if isinstance(x, op.variable_type) else _NO_FIT
    if type(op) is BoxedOp:
        return x if isinstance(x, VariableLike) else op.variable_type.from_parts(x, ())
    return x.value if type(x) is DataLeaf else x  # ArrayOp, MutableRefOp


def _children_like(op: Op, x: Leaf) -> dict[Key, object] | None:
    """The children of `x` by key if it fits a node/container/pytree op, else None."""
    if type(op) is NodeOp:
        return dict(op.impl.children(x)) if type(x) is op.node_type else None
    if type(op) is ContainerOp:
        kind = type(x)
        if kind is not op.container_type or len(x) != len(op.keys):
            return None
        return dict(x.items()) if kind is dict else dict(enumerate(x))
    found = pytree_children(x)
    return {} if found is None else dict(found.children)
