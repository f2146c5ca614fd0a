"""GraphDef: the static structure of an object graph.

A GraphDef is a tree of small frozen records. It is hashable and compared by
structure (types, attribute names, static values, Variable types and
metadata); shared objects and cycles are encoded as `Ref(index)` to the
record that first introduced the object, so two structurally equal graphs
with the same sharing pattern give equal GraphDefs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Hashable

import jax


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
        return hash((self.type, self.index, self.static, self.children))


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
        return hash(self.value)


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


class GraphDef:
    """The static half of `split`; pass it back to `merge`.

    Hashable and structurally compared, so it can be a static argument of
    `jax.jit`.
    """

    __slots__ = ("_root", "num_leaves", "_hash", "_ops", "links")

    def __init__(self, root: Any, num_leaves: int, links: tuple = ()):
        self._root = root
        self.num_leaves = num_leaves
        self._hash: int | None = None
        self._ops: tuple | None = None
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
        return graphdef

    @property
    def root(self) -> Any:
        root = self._root
        if root is None:
            from nnxfn.core.fastpath import root_from_ops

            root = self._root = root_from_ops(self._ops)
        return root

    @property
    def ops(self) -> list:
        """The flat program of this GraphDef (pre-order ops, built once)."""
        ops = self._ops
        if ops is None:
            from nnxfn.core.fastpath import ops_from_root

            ops = self._ops = ops_from_root(self._root)
        return ops

    def __hash__(self) -> int:
        if self._hash is None:
            try:
                self._hash = hash((self.root, self.links)) if self.links else hash(self.root)
            except TypeError:
                raise TypeError(_unhashable_message(self.root)) from None
        return self._hash

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        return (
            isinstance(other, GraphDef)
            and hash(self) == hash(other)
            and self.root == other.root
            and self.links == other.links
        )

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
        """`out, (graphdef, state) = graphdef.apply(state).method(*args)`."""
        from nnxfn.core.calls import apply

        return apply(self, state, *states)

    def __class_getitem__(cls, item: Any) -> type:  # `GraphDef[Model]` annotations
        return cls

    def __repr__(self) -> str:
        return f"GraphDef({_describe(self.root, 1)})"


def _describe(d: Any, indent: int) -> str:
    pad = "  " * indent
    if isinstance(d, NodeDef) or isinstance(d, ContainerDef) or isinstance(d, PytreeDef):
        name = d.type.__name__ if not isinstance(d, PytreeDef) else "pytree"
        if not d.children:
            return f"{name}()"
        inner = ",\n".join(
            f"{pad}  {k!r}: {_describe(v, indent + 1)}" for k, v in d.children
        )
        return f"{name}(\n{inner}\n{pad})"
    if isinstance(d, (VariableDef, BoxedDef)):
        return f"{d.type.__name__}"
    if isinstance(d, Ref):
        return f"<shared #{d.index}>"
    if isinstance(d, ArrayDef):
        return "Array"
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
