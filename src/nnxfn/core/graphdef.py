"""GraphDef: the static structure of an object graph.

A GraphDef is a tree of small frozen records. It is hashable and compared by
structure (types, attribute names, static values, Variable types and
metadata); shared objects and cycles are encoded as `Ref(index)` to the
record that first introduced the object, so two structurally equal graphs
with the same sharing pattern give equal GraphDefs.
"""

from __future__ import annotations

import dataclasses
import typing as tp
from typing import Any, Hashable

import jax

from nnxfn.core.registry import lookup


def same_value(a: Any, b: Any) -> bool:
    """Equality for static values that also compares types, element-wise in
    tuples: `1`, `1.0` and `True` are equal in Python but trace differently."""
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    if type(a) is tuple:
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    return bool(a == b)


def static_hash(x: Any) -> int:
    """`hash(x)`, or for unhashable static values (a config dataclass with a
    list field, a dict) a hash of their contents, consistent with `same_value`:
    equal values hash equal (values of other types just share a bucket)."""
    try:
        return hash(x)
    except TypeError:
        pass
    t = type(x)
    if t is list or t is tuple:
        return hash((t, tuple(static_hash(v) for v in x)))
    if t is dict:
        return hash((t, len(x), sum(static_hash(k) ^ static_hash(v) for k, v in x.items())))
    if isinstance(x, (set, bytearray)):
        return hash((t, frozenset(x) if isinstance(x, set) else bytes(x)))
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return hash((t, tuple(static_hash(getattr(x, f.name)) for f in dataclasses.fields(x))))
    return hash(t)


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class NodeDef:
    """A registered graph node (e.g. a Module) with identity."""

    type: type
    index: int
    static: Hashable
    children: tuple[tuple[Any, Any], ...]  # (key, def)

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

    type: type
    index: int
    metadata: tuple[tuple[str, Any], ...]

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

    type: type


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

    type: type
    children: tuple[tuple[Any, Any], ...]  # (key, def)


@dataclasses.dataclass(frozen=True, slots=True)
class PytreeDef:
    """Any other JAX pytree node (namedtuple, Equinox module, ...)."""

    treedef: Any  # jax PyTreeDef, one level
    children: tuple[tuple[Any, Any], ...]  # (key, def)


class _ApplyHook:
    """`GraphDef.apply`'s implementation, set by `calls.py` (which builds on
    merge and split, above this module)."""

    __slots__ = ("fn",)

    def __init__(self) -> None:
        self.fn: tp.Callable[..., Any] | None = None


APPLY = _ApplyHook()


class GraphDef:
    """The static half of `split`; pass it back to `merge`.

    Hashable and structurally compared, so it can be a static argument of
    `jax.jit`.
    """

    # `_plan`: the ops as `program._unflatten_ops` runs them, made on first use.
    __slots__ = ("_root", "num_leaves", "_hash", "_ops", "links", "_plan")

    def __init__(self, root: Any, num_leaves: int, links: tuple = ()):
        self._root = root
        self.num_leaves = num_leaves
        self._hash: int | None = None
        self._ops: tuple | None = None
        self._plan: list | None = None
        # (node index, key, target index): non-owning references between
        # objects of this graph (see `NodeImpl.links`), re-made by `unflatten`.
        self.links = links

    @classmethod
    def _from_ops(cls, ops: list, num_leaves: int, links: tuple = ()) -> GraphDef:
        """A GraphDef given by its flat program (see `graph.py`); the tree of
        records (`root`) is built from it only when first read."""
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
        root = self._root
        if root is None:
            root = self._root = root_from_ops(self._ops)
        return root

    @property
    def ops(self) -> list:
        """The flat program of this GraphDef (pre-order ops, built once)."""
        ops = self._ops
        if ops is None:
            ops = self._ops = ops_from_root(self._root)
        return ops

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
        a, b = self.ops, other.ops
        return self.links == other.links and len(a) == len(b) and all(map(op_equal, a, b))

    def __reduce__(self):
        return (GraphDef, (self.root, self.num_leaves, self.links))

    @property
    def type(self) -> type | None:
        root = self.root
        return getattr(root, "type", None)

    @property
    def nodes(self) -> list[Any]:
        """The records in pre-order, root first (static values left out)."""
        out: list[Any] = []

        def walk(d: Any) -> None:
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

    def __class_getitem__(cls, item: Any) -> type:  # `GraphDef[Model]` annotations
        return cls

    def __repr__(self) -> str:
        return f"GraphDef({_describe(self.root, 1)})"


# -- the flat program (see walker.py, program.py) --------------------------------------
OP_VAR, OP_ARRAY, OP_BOXED, OP_STATIC, OP_REF, OP_NODE, OP_CONT, OP_PYTREE, OP_AREF, OP_ALIAS = range(10)
_ARRAY_OP = (OP_ARRAY,)
_AREF_OP = (OP_AREF,)


def root_from_ops(ops: list) -> tp.Any:
    """The tree of GraphDef records described by a flat program (iteratively)."""
    count = 0
    top: list = []
    stack: list = [[None, 0, 1, top]]  # [op, index, children still to read, children]
    it = iter(ops)
    while True:
        frame = stack[-1]
        if not frame[2]:
            stack.pop()
            op, i, _, kids = frame
            if op is None:
                return top[0]
            pairs = tuple(zip(op[3] if op[0] == OP_NODE else op[2], kids))
            if op[0] == OP_NODE:
                d = NodeDef(op[1], i, op[2], pairs)
            elif op[0] == OP_CONT:
                d = ContainerDef(op[1], pairs)
            else:
                d = PytreeDef(op[1], pairs)
            stack[-1][3].append(d)
            stack[-1][2] -= 1
            continue
        op = next(it)
        code = op[0]
        if code == OP_VAR:
            d = VariableDef(op[1], count, op[2])
            count += 1
        elif code == OP_ARRAY:
            d = ARRAY
        elif code == OP_AREF:
            d = REF_ARRAY
        elif code == OP_ALIAS:
            d = SameRef(op[1])
        elif code == OP_STATIC:
            d = StaticDef(op[1])
        elif code == OP_REF:
            d = Ref(op[1])
        elif code == OP_BOXED:
            d = BoxedDef(op[1])
        else:
            index = count
            if code == OP_NODE:
                count += 1
            n = len(op[3] if code == OP_NODE else op[2])
            stack.append([op, index, n, []])
            continue
        frame[3].append(d)
        frame[2] -= 1


def ops_from_root(root: tp.Any) -> list:
    """The flat program of a tree of GraphDef records (iteratively)."""
    ops: list = []
    stack = [root]
    while stack:
        d = stack.pop()
        if isinstance(d, VariableDef):
            ops.append((OP_VAR, d.type, d.metadata))
        elif isinstance(d, RefArrayDef):
            ops.append(_AREF_OP)
        elif isinstance(d, ArrayDef):
            ops.append(_ARRAY_OP)
        elif isinstance(d, SameRef):
            ops.append((OP_ALIAS, d.number))
        elif isinstance(d, StaticDef):
            ops.append((OP_STATIC, d.value))
        elif isinstance(d, Ref):
            ops.append((OP_REF, d.index))
        elif isinstance(d, BoxedDef):
            ops.append((OP_BOXED, d.type))
        elif not isinstance(d, (NodeDef, ContainerDef, PytreeDef)):
            raise TypeError(f"unknown GraphDef entry {d!r}")
        else:
            keys = tuple(k for k, _ in d.children)
            if isinstance(d, NodeDef):
                ops.append((OP_NODE, d.type, d.static, keys, lookup(d.type)))
            elif isinstance(d, ContainerDef):
                ops.append((OP_CONT, d.type, keys))
            else:
                ops.append((OP_PYTREE, d.treedef, keys))
            stack.extend(child for _, child in reversed(d.children))
    return ops


def op_hash(op: tuple) -> int:
    """Hash of one op, consistent with `op_equal` (statics hashed by contents)."""
    code = op[0]
    if code == OP_NODE:
        return hash((code, op[1], static_hash(op[2]), op[3]))
    if code == OP_STATIC:
        return hash((code, static_hash(op[1])))
    return hash(op)


def op_equal(a: tuple, b: tuple) -> bool:
    code = a[0]
    if code != b[0]:
        return False
    if code == OP_NODE:
        return a[1] is b[1] and a[3] == b[3] and same_value(a[2], b[2])
    if code == OP_VAR:
        return a[1] is b[1] and same_value(a[2], b[2])
    if code == OP_STATIC:
        return same_value(a[1], b[1])
    return a == b


def _describe(d: Any, indent: int) -> str:
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


def _unhashable_message(root: Any) -> str:
    """Find the first unhashable static value or metadata and name its path."""
    from nnxfn.core.errors import unhashable_metadata, unhashable_static

    def is_hashable(x: Any) -> bool:
        try:
            hash(x)
        except TypeError:
            return False
        return True

    def find(d: Any, path: tuple) -> str | None:
        if isinstance(d, VariableDef):
            for name, value in d.metadata:
                if not is_hashable(value):
                    return unhashable_metadata(path, name, value)
            return None
        if isinstance(d, StaticDef):
            return None if is_hashable(d.value) else unhashable_static(path, d.value)
        if isinstance(d, NodeDef) and not is_hashable(d.static):
            for name, value in d.static:
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
