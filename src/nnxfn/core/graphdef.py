"""GraphDef: the static structure of an object graph.

A GraphDef is a flat program of op records (`ops.py`), one per value met in
a pre-order walk (`walker.py` writes it, `program.py` runs it back). It is
hashable and compared by structure over those ops (types, attribute names,
static values, Variable types and metadata); shared objects and cycles are
`SharedOp(object_index)`, so two structurally equal graphs with the same
sharing pattern give equal GraphDefs.

`GraphDef.root` reads the same ops as a tree of frozen records (`NodeDef`,
`VariableDef`, `Ref`, `ContainerDef`, ...), built on first read, for code
that inspects a GraphDef; a GraphDef made from such a tree (`GraphDef(root,
num_leaves)`) gets its ops from it when first run.
"""

from __future__ import annotations

import builtins
import dataclasses
import typing as tp
from typing import Any, Hashable

import jax

from nnxfn.core.ops import (
    ARRAY_OP,
    MUTABLE_REF_OP,
    ArrayOp,
    BoxedOp,
    ContainerOp,
    MutableRefOp,
    NodeOp,
    Op,
    PytreeOp,
    SameRefOp,
    SharedOp,
    StaticOp,
    VariableOp,
    PlanOp,
    op_hash,
    ops_equal,
    plan_ops,
    same_value as same_value,
    static_hash as static_hash,
)
from nnxfn.core.errors import unhashable_metadata, unhashable_static
from nnxfn.core.registry import lookup
from nnxfn.core.variable_like import VariableLike

Key = Hashable  # an attribute name, a list index or a dict key


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class NodeDef:
    """A registered graph node (e.g. a Module) with identity."""

    type: builtins.type
    index: int
    static: Hashable
    children: tuple[tuple[Key, Record], ...]

    def __eq__(self, other: object) -> bool:
        return self is other or (
            type(other) is NodeDef
            and self.type is other.type
            and self.index == other.index
            and same_value(self.static, other.static)
            and self.children == other.children
        )

    def __hash__(self) -> int:
        return hash((self.type, self.index, static_hash(self.static), self.children))

    @property
    def metadata(self) -> Hashable:
        """Flax's name for `static` (the node type's per-node data)."""
        return self.static

    @property
    def num_attributes(self) -> int:
        return len(self.children)


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class VariableDef:
    """A boxed leaf (Variable); its value is in the State."""

    type: builtins.type[VariableLike]
    index: int
    metadata: tuple[tuple[str, object], ...]

    def __eq__(self, other: object) -> bool:
        return self is other or (
            type(other) is VariableDef
            and self.type is other.type
            and self.index == other.index
            and same_value(self.metadata, other.metadata)
        )

    def __hash__(self) -> int:
        return hash((self.type, self.index, self.metadata))


@dataclasses.dataclass(frozen=True, slots=True)
class Ref:
    """A second path to an already-seen node or Variable."""

    index: int


@dataclasses.dataclass(frozen=True, slots=True)
class ArrayDef:
    """A raw array leaf (no Variable box); its value is in the State."""


ARRAY = ArrayDef()


@dataclasses.dataclass(frozen=True, slots=True)
class RefArrayDef(ArrayDef):
    """A bare `jax.Ref` leaf: an array leaf with identity (see `SameRef`)."""


REF_ARRAY = RefArrayDef()


@dataclasses.dataclass(frozen=True, slots=True)
class SameRef:
    """A second path to the `number`-th bare `jax.Ref` of the GraphDef (in
    pre-order): no leaf of its own, the first path's Ref again."""

    number: int


@dataclasses.dataclass(frozen=True, slots=True)
class BoxedDef:
    """A raw array inside a foreign pytree (e.g. an Equinox module), shown in
    the State boxed as a Variable of `type` (e.g. Param) and unboxed again by
    `unflatten`. There is no live Variable object behind it."""

    type: builtins.type[VariableLike]


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class StaticDef:
    """A static value, stored in the GraphDef itself."""

    value: Hashable

    def __eq__(self, other: object) -> bool:
        return self is other or (type(other) is StaticDef and same_value(self.value, other.value))

    def __hash__(self) -> int:
        return static_hash(self.value)


@dataclasses.dataclass(frozen=True, slots=True)
class ContainerDef:
    """A list, tuple or dict walked by value (no identity)."""

    type: builtins.type
    children: tuple[tuple[Key, Record], ...]


@dataclasses.dataclass(frozen=True, slots=True)
class PytreeDef:
    """Any other JAX pytree node (namedtuple, Equinox module, ...)."""

    treedef: Any  # jax PyTreeDef, one level
    children: tuple[tuple[Key, Record], ...]


# A record of the tree view (`GraphDef.root`):
Record = tp.Union[
    NodeDef, VariableDef, Ref, ArrayDef, SameRef, BoxedDef, StaticDef, ContainerDef, "PytreeDef"
]
Links = tuple[tuple[int, tp.Hashable, int], ...]


class _ApplyHook:
    """`GraphDef.apply`'s implementation, set by `calls.py` (which builds on
    merge and split, above this module)."""

    __slots__ = ("fn",)

    def __init__(self) -> None:
        self.fn: tp.Callable[..., tp.Any] | None = None


APPLY = _ApplyHook()


class GraphDef:
    """The static half of `split`; pass it back to `merge`.

    Hashable and structurally compared, so it can be a static argument of
    `jax.jit`.
    """

    # `_plan`: the ops as `program.py` runs them (see `ops.LeafNodesOp`), made on first use.
    __slots__ = ("_root", "num_leaves", "_hash", "_ops", "links", "_plan")

    def __init__(self, root: Record, num_leaves: int, links: Links = ()):
        """A GraphDef given by its tree of records (see `root`); its ops are
        derived from them when first needed."""
        self._root: tp.Any = root  # a Record (a `TreeNodeDef` in tree mode), or None until read
        self.num_leaves = num_leaves
        self._hash: int | None = None
        self._ops: list[Op] | None = None
        self._plan: list[PlanOp] | None = None
        # (node index, key, target index): non-owning references between
        # objects of this graph (see `NodeImpl.links`), re-made by `unflatten`.
        self.links = links

    @classmethod
    def from_ops(cls, ops: list[Op], num_leaves: int, links: Links = ()) -> GraphDef:
        """A GraphDef given by its ops (as `walker.walk_graph` writes them); the
        tree of records (`root`) is derived from them only when first read."""
        graphdef = object.__new__(cls)
        graphdef._root = None
        graphdef.num_leaves = num_leaves
        graphdef._hash = None
        graphdef._ops = ops
        graphdef.links = links
        graphdef._plan = None
        return graphdef

    @property
    def root(self) -> Any:
        """The GraphDef as a tree of records (`NodeDef`, `VariableDef`, ...): a
        view of the ops for reading, built once."""
        root = self._root
        if root is None:
            assert self._ops is not None
            root = self._root = root_from_ops(self._ops)
        return root

    @property
    def ops(self) -> list[Op]:
        """The flat program of this GraphDef: one op record per value, in pre-order."""
        ops = self._ops
        if ops is None:
            ops = self._ops = ops_from_root(self._root)
        return ops

    @property
    def plan(self) -> list[PlanOp]:
        """The ops as `program.py` runs them: runs of leaf-only graph nodes
        folded into `LeafNodesOp`s (see `ops.plan_ops`), made once."""
        plan = self._plan
        if plan is None:
            plan = self._plan = plan_ops(self.ops)
        return plan

    def __hash__(self) -> int:
        if self._hash is None:  # over the flat program: no recursion, any depth
            try:
                self._hash = hash((self.num_leaves, self.links, tuple(map(op_hash, self.ops))))
            except TypeError:
                raise TypeError(_unhashable_message(self.root)) from None
        return self._hash

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, GraphDef) or hash(self) != hash(other):
            return False
        return self.links == other.links and ops_equal(self.ops, other.ops)

    def __reduce__(self) -> tuple[tp.Callable[..., GraphDef], tuple[Record, int, Links]]:
        return (GraphDef, (self.root, self.num_leaves, self.links))

    @property
    def type(self) -> builtins.type | None:
        """The type of the root object (Flax's `GraphDef.type`)."""
        root = self.root
        found: builtins.type | None = getattr(root, "type", None)
        return found

    @property
    def nodes(self) -> list[tp.Any]:  # Records (a `TreeNodeDef` first in tree mode)
        """The records in pre-order, root first (static values left out)."""
        out: list[Record] = []

        def walk(d: Record) -> None:
            if not isinstance(d, StaticDef):
                out.append(d)
            for _, child in getattr(d, "children", ()):
                walk(child)

        walk(self.root)
        return out

    def apply(self, state: Any, *states: Any, graph: bool | None = None) -> Any:
        """`out, (graphdef, state) = graphdef.apply(state).method(*args)` (see `calls.apply`)."""
        apply = APPLY.fn
        if apply is None:
            raise RuntimeError("GraphDef.apply needs nnxfn.core.calls (import nnxfn)")
        return apply(self, state, *states)

    def __class_getitem__(cls, item: Any) -> builtins.type:  # `GraphDef[Model]` annotations
        return cls

    def __repr__(self) -> str:
        return f"GraphDef({_describe(self.root, 1)})"


# -- records <-> ops ---------------------------------------------------------------------
def _leaf_record(op: Op, count: int) -> Record:
    """The record of an op without children (`count`: the next object index)."""
    if type(op) is VariableOp:
        return VariableDef(op.variable_type, count, op.metadata)
    if type(op) is ArrayOp:
        return ARRAY
    if type(op) is MutableRefOp:
        return REF_ARRAY
    if type(op) is SameRefOp:
        return SameRef(op.number)
    if type(op) is StaticOp:
        return StaticDef(tp.cast(Hashable, op.value))
    if type(op) is SharedOp:
        return Ref(op.object_index)
    if type(op) is BoxedOp:
        return BoxedDef(op.variable_type)
    raise TypeError(f"not a leaf op: {op!r}")


class _OpenRecord:
    """A node/container/pytree record being rebuilt: its op, its object
    index, and the records of the children read so far."""

    __slots__ = ("op", "index", "children")

    def __init__(self, op: NodeOp | ContainerOp | PytreeOp | None, index: int) -> None:
        self.op = op
        self.index = index
        self.children: list[Record] = []

    def record(self) -> Record:
        op = self.op
        assert op is not None
        pairs = tuple(zip(op.keys, self.children))
        if type(op) is NodeOp:
            return NodeDef(op.node_type, self.index, op.static, pairs)
        if type(op) is ContainerOp:
            return ContainerDef(op.container_type, pairs)
        assert type(op) is PytreeOp
        return PytreeDef(op.treedef, pairs)


def root_from_ops(ops: tp.Sequence[Op]) -> Record:
    """The tree of GraphDef records described by a flat program (iteratively)."""
    count = 0
    top = _OpenRecord(None, 0)
    stack = [top]
    pending = [1]  # children still to read, per open record
    for op in ops:
        if type(op) is NodeOp or type(op) is ContainerOp or type(op) is PytreeOp:
            stack.append(_OpenRecord(op, count))
            pending.append(len(op.keys))
            if type(op) is NodeOp:
                count += 1
        else:
            stack[-1].children.append(_leaf_record(op, count))
            if type(op) is VariableOp:
                count += 1
            pending[-1] -= 1
        while not pending[-1] and len(stack) > 1:  # close finished records
            done = stack.pop()
            pending.pop()
            stack[-1].children.append(done.record())
            pending[-1] -= 1
    (record,) = top.children
    return record


def ops_from_root(root: Record) -> list[Op]:
    """The flat program of a tree of GraphDef records (iteratively)."""
    ops: list[Op] = []
    stack = [root]
    while stack:
        d = stack.pop()
        if isinstance(d, VariableDef):
            ops.append(VariableOp(d.type, d.metadata))
        elif isinstance(d, RefArrayDef):
            ops.append(MUTABLE_REF_OP)
        elif isinstance(d, ArrayDef):
            ops.append(ARRAY_OP)
        elif isinstance(d, SameRef):
            ops.append(SameRefOp(d.number))
        elif isinstance(d, StaticDef):
            ops.append(StaticOp(d.value))
        elif isinstance(d, Ref):
            ops.append(SharedOp(d.index))
        elif isinstance(d, BoxedDef):
            ops.append(BoxedOp(d.type))
        elif isinstance(d, (NodeDef, ContainerDef, PytreeDef)):
            keys = tuple(k for k, _ in d.children)
            if isinstance(d, NodeDef):
                impl = lookup(d.type)
                if impl is None:
                    raise TypeError(f"{d.type.__name__} is not a registered graph node type")
                ops.append(NodeOp(d.type, d.static, keys, impl))
            elif isinstance(d, ContainerDef):
                ops.append(ContainerOp(d.type, keys))
            else:
                ops.append(PytreeOp(d.treedef, keys))
            stack.extend(child for _, child in reversed(d.children))
        else:
            raise TypeError(f"unknown GraphDef entry {d!r}")
    return ops


def _describe(d: Record, indent: int) -> str:
    pad = "  " * indent
    if isinstance(d, NodeDef) or isinstance(d, ContainerDef) or isinstance(d, PytreeDef):
        name = d.type.__name__ if not isinstance(d, PytreeDef) else "pytree"
        if not d.children:
            return f"{name}()"
        inner = ",\n".join(f"{pad}  {k!r}: {_describe(v, indent + 1)}" for k, v in d.children)
        return f"{name}(\n{inner}\n{pad})"
    if isinstance(d, (VariableDef, BoxedDef)):
        return f"{d.type.__name__}"
    if isinstance(d, Ref):
        return f"<shared #{d.index}>"
    if isinstance(d, RefArrayDef):
        return "Ref"
    if isinstance(d, ArrayDef):
        return "Array"
    if isinstance(d, SameRef):
        return f"<same Ref #{d.number}>"
    return repr(d.value)


def _unhashable_message(root: Record) -> str:
    """Find the first unhashable static value or metadata and name its path."""

    def is_hashable(x: object) -> bool:
        try:
            hash(x)
        except TypeError:
            return False
        return True

    def find(d: Record, path: tuple[Key, ...]) -> str | None:
        if isinstance(d, VariableDef):
            for name, value in d.metadata:
                if not is_hashable(value):
                    return unhashable_metadata(path, name, value)
            return None
        if isinstance(d, StaticDef):
            return None if is_hashable(d.value) else unhashable_static(path, d.value)
        if isinstance(d, NodeDef) and not is_hashable(d.static):
            for name, value in tp.cast(tp.Iterable[tuple[str, object]], d.static):
                if not is_hashable(value):
                    return unhashable_static(path + (name,), value)
        for key, child in getattr(d, "children", ()):
            found = find(child, path + (key,))
            if found is not None:
                return found
        return None

    return find(root, ()) or "GraphDef holds an unhashable value"


# A GraphDef is static data to JAX: a pytree with no leaves (`jax.jit(f)(graphdef, state)`).
jax.tree_util.register_static(GraphDef)
