"""The op records: what a GraphDef is made of.

A GraphDef is a flat program: one op per value met in a pre-order walk of
the object graph (`walker.py` writes it, `program.py` runs it back). Each op
kind is an immutable named record, matched by type:

    VariableOp(variable_type, metadata)  a Variable: takes the next leaf and object index
    ArrayOp()                            a raw array: takes the next leaf
    BoxedOp(variable_type)               an array inside a foreign pytree, boxed in the State
    MutableRefOp()                       a bare `jax.Ref`: takes the next leaf
    SameRefOp(number)                    the `number`-th MutableRefOp's Ref again (no leaf)
    StaticOp(value)                      a static value, kept in the GraphDef
    SharedOp(object_index)               the graph node or Variable of that object index again
    NodeOp(node_type, static, keys, impl)  a graph node (takes the next object index),
                                         then the ops of its children, one per key
    ContainerOp(container_type, keys)    a list, tuple or dict, then its children
    PytreeOp(treedef, keys)              any other JAX pytree, then its children

Object indices count graph nodes and Variables in pre-order; a second path
to the same object is a `SharedOp`. Two ops are compared with `op_equal`
(never `==`: records of different kinds may hold equal fields).

For speed, `plan_ops` rewrites the ops once per GraphDef into the plan
`program.py` runs: each graph node whose children are all single ops (most
layers) becomes a `LeafNodesOp`, counting equal such nodes in a row (the
layers of a list) in one record, built by one `NodeImpl.builder` call.
"""

from __future__ import annotations

import builtins
import dataclasses
import operator
import typing as tp
from typing import Hashable

from nnxfn.core.variable_like import VariableLike

if tp.TYPE_CHECKING:
    from nnxfn.core.registry import NodeImpl

Key = Hashable  # an attribute name, a list index or a dict key
Metadata = tuple[tuple[str, object], ...]


class VariableOp(tp.NamedTuple):
    """A Variable: takes the next leaf and the next object index."""

    variable_type: builtins.type[VariableLike]
    metadata: Metadata


class ArrayOp(tp.NamedTuple):
    """A raw array (no Variable box): takes the next leaf."""


class BoxedOp(tp.NamedTuple):
    """A raw array inside a foreign pytree, shown in the State boxed as a
    `variable_type` (see `registry.set_foreign_leaf_classifier`); the graph
    holds the raw value again after `merge`."""

    variable_type: builtins.type[VariableLike]


class MutableRefOp(tp.NamedTuple):
    """A bare `jax.Ref`: an array leaf with identity; takes the next leaf."""


class SameRefOp(tp.NamedTuple):
    """A second path to the `number`-th `MutableRefOp`'s Ref (in pre-order): no leaf."""

    number: int


class StaticOp(tp.NamedTuple):
    """A static value, stored in the GraphDef itself."""

    value: object


class SharedOp(tp.NamedTuple):
    """A second path to the graph node or Variable of object index `object_index`."""

    object_index: int


class NodeOp(tp.NamedTuple):
    """A registered graph node; the ops of its children follow, one per key."""

    node_type: builtins.type
    static: Hashable  # the node type's per-node data (hashed by contents if it cannot be)
    keys: tuple[Key, ...]
    impl: NodeImpl


class ContainerOp(tp.NamedTuple):
    """A list, tuple or dict (walked by value); its children's ops follow."""

    container_type: builtins.type
    keys: tuple[Key, ...]


class PytreeOp(tp.NamedTuple):
    """Any other JAX pytree node (one level of `treedef`); its children's ops follow."""

    treedef: tp.Any  # jax PyTreeDef
    keys: tuple[Key, ...]


Op = tp.Union[
    VariableOp, ArrayOp, BoxedOp, MutableRefOp, SameRefOp, StaticOp, SharedOp, NodeOp, ContainerOp, PytreeOp
]
ParentOp = tp.Union[NodeOp, ContainerOp, PytreeOp]

ARRAY_OP = ArrayOp()
MUTABLE_REF_OP = MutableRefOp()
# Ops that take a leaf from the State:
LEAF_OPS = (VariableOp, ArrayOp, BoxedOp, MutableRefOp)
# Ops followed by their children's ops:
PARENT_OPS = (NodeOp, ContainerOp, PytreeOp)
# Ops that make a pytree hold graph state (objects with identity):
OWNING_OPS = (VariableOp, NodeOp, SharedOp, MutableRefOp, SameRefOp)


def child_keys(op: Op) -> tuple[Key, ...]:
    """The child keys of a node/container/pytree op; () for the others."""
    if type(op) is NodeOp or type(op) is ContainerOp or type(op) is PytreeOp:
        return op.keys
    return ()


# -- comparing ops ---------------------------------------------------------------------
def same_value(a: object, b: object) -> bool:
    """Equality for static values that also compares types, element-wise in
    tuples: `1`, `1.0` and `True` are equal in Python but trace differently."""
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    if type(a) is tuple:
        assert isinstance(b, tuple)
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    return bool(a == b)


def static_hash(x: object) -> int:
    """`hash(x)`, or for unhashable static values (a config dataclass with a
    list field, a dict) a hash of their contents, consistent with `same_value`:
    equal values hash equal (values of other types just share a bucket)."""
    try:
        return hash(x)
    except TypeError:
        pass
    t = type(x)
    if isinstance(x, (list, tuple)):
        return hash((t, tuple(static_hash(v) for v in x)))
    if isinstance(x, dict):
        return hash((t, len(x), sum(static_hash(k) ^ static_hash(v) for k, v in x.items())))
    if isinstance(x, set):
        return hash((t, frozenset(x)))
    if isinstance(x, bytearray):
        return hash((t, bytes(x)))
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return hash((t, tuple(static_hash(getattr(x, f.name)) for f in dataclasses.fields(x))))
    return hash(t)


def op_hash(op: Op) -> int:
    """Hash of one op, consistent with `op_equal` (statics hashed by contents)."""
    if type(op) is NodeOp:
        return hash((NodeOp, op.node_type, static_hash(op.static), op.keys))
    if type(op) is StaticOp:
        return hash((StaticOp, static_hash(op.value)))
    return hash((type(op), op))


def op_equal(a: Op, b: Op) -> bool:
    """Whether two ops describe the same structure (statics by `same_value`)."""
    if type(a) is not type(b):
        return False
    if type(a) is NodeOp:
        assert type(b) is NodeOp
        return a.node_type is b.node_type and a.keys == b.keys and same_value(a.static, b.static)
    if type(a) is VariableOp:
        assert type(b) is VariableOp
        return a.variable_type is b.variable_type and same_value(a.metadata, b.metadata)
    if type(a) is StaticOp:
        assert type(b) is StaticOp
        return same_value(a.value, b.value)
    return a == b


def ops_equal(a: tp.Sequence[Op], b: tp.Sequence[Op]) -> bool:
    """`op_equal` over two op sequences."""
    return len(a) == len(b) and all(map(op_equal, a, b))


# -- the plan: how `program.py` runs the ops -------------------------------------------
class Picker(tp.NamedTuple):
    """How a trusted merge fills nodes whose children are only Variables (at
    least one) and statics with C-level calls: `order(variables + statics)`
    puts them in key order."""

    num_variables: int
    statics: tuple[object, ...]
    order: tp.Callable[[tuple[object, ...]], tuple[object, ...]]


class LeafNodesOp(tp.NamedTuple):
    """`repeat` equal graph nodes in a row among the children of one parent
    (the layers of a list), each with only single-op children (Variables,
    arrays, statics, back-references): built without a frame of their own,
    by one `make` call when the node type has a `NodeImpl.builder`."""

    node: NodeOp
    children: tuple[Op, ...]
    picker: Picker | None
    make: tp.Callable[[tp.Any], list[tp.Any]] | None
    repeat: int


PlanOp = tp.Union[Op, LeafNodesOp]
_SINGLE = (VariableOp, ArrayOp, BoxedOp, StaticOp, SharedOp, MutableRefOp, SameRefOp)


class _PlanWalk:
    """Where `plan_ops` is in the program: the children still to come in
    each open node/container (the root's slot first) and a number per open
    frame (a run of LeafNodesOp never crosses into another parent)."""

    __slots__ = ("left", "frames", "opened")

    def __init__(self) -> None:
        self.left = [1]
        self.frames = [0]
        self.opened = 0

    def open(self, children: int) -> None:
        self.opened += 1
        self.left.append(children)
        self.frames.append(self.opened)

    def close_done(self) -> None:
        """Drop the open frames whose last child was just read."""
        left, frames = self.left, self.frames
        while left and not left[-1]:
            left.pop()
            frames.pop()


def _leaf_children(ops: tp.Sequence[Op], i: int, node: NodeOp, index: int) -> tuple[Op, ...] | None:
    """The child ops of `node` (at `ops[i:]`) if they are all single ops and
    none refers back to the node itself (index `index`); else None."""
    count = len(node.keys)
    kids = tuple(ops[i : i + count])
    if len(kids) != count or not all([type(k) in _SINGLE for k in kids]):
        return None
    if SharedOp in map(type, kids) and any([type(k) is SharedOp and k.object_index == index for k in kids]):
        return None  # it holds itself: made before its children
    return kids


class _Run:
    """Equal leaf-only nodes in a row among one parent's children, not yet
    written as a `LeafNodesOp`."""

    __slots__ = ("node", "children", "kinds", "count", "frame", "extends")

    def __init__(self, node: NodeOp, children: tuple[Op, ...], frame: int) -> None:
        self.node = node
        self.children = children
        self.kinds = tuple(map(type, children))
        self.count = 1
        self.frame = frame
        self.extends = SharedOp not in self.kinds  # back-references: other objects each time

    def takes(self, node: NodeOp, children: tuple[Op, ...], frame: int) -> bool:
        """Whether `node` with `children` (in `frame`) is one more of this run."""
        return (
            frame == self.frame
            and self.extends
            and node == self.node  # tuples compared in C; the kinds below make it exact
            and children == self.children
            and tuple(map(type, children)) == self.kinds
            and op_equal(node, self.node)
        )

    def op(self) -> LeafNodesOp:
        node = self.node
        builder = node.impl.builder
        make = builder(node.node_type, node.static, node.keys) if builder is not None else None
        return LeafNodesOp(node, self.children, _picker(self.children), make, self.count)


def plan_ops(ops: tp.Sequence[Op]) -> list[PlanOp]:
    """`ops` with every graph node whose children are all single ops (most
    layers) folded into a `LeafNodesOp`, and equal such nodes in a row
    among one parent's children counted in one."""
    out: list[PlanOp] = []
    i, n = 0, len(ops)
    index = 0  # object index of the next Variable or graph node
    where = _PlanWalk()
    run: _Run | None = None
    while i < n:
        op = ops[i]
        i += 1
        frame = where.frames[-1]
        where.left[-1] -= 1
        kids = _leaf_children(ops, i, op, index) if type(op) is NodeOp else None
        if kids is not None:
            assert type(op) is NodeOp
            i += len(kids)
            index += 1 + list(map(type, kids)).count(VariableOp)
            if run is not None and run.takes(op, kids, frame):
                run.count += 1
            else:
                if run is not None:
                    out.append(run.op())
                run = _Run(op, kids, frame)
            where.close_done()
            continue
        if run is not None:
            out.append(run.op())
            run = None
        if type(op) is VariableOp or type(op) is NodeOp:
            index += 1
        out.append(op)
        sub = len(child_keys(op))
        if sub:
            where.open(sub)
        else:
            where.close_done()
    if run is not None:
        out.append(run.op())
    return out


def _picker(kids: tuple[Op, ...]) -> Picker | None:
    """The `Picker` of children that are only Variables (at least one) and statics; else None."""
    if not all(type(k) is VariableOp or type(k) is StaticOp for k in kids):
        return None
    nvars = sum(type(k) is VariableOp for k in kids)
    if not nvars:
        return None
    statics = tuple(k.value for k in kids if type(k) is StaticOp)
    order, v, st = [], 0, nvars
    for k in kids:
        if type(k) is VariableOp:
            order.append(v)
            v += 1
        else:
            order.append(st)
            st += 1
    if len(order) < 2:  # itemgetter of one index gives the item, not a tuple
        return Picker(nvars, statics, tuple)
    return Picker(nvars, statics, operator.itemgetter(*order))
