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


@dataclasses.dataclass(frozen=True, slots=True)
class NodeDef:
    """A registered graph node (e.g. a Module) with identity."""

    type: type
    index: int
    static: Hashable
    children: tuple[tuple[Any, Any], ...]  # (key, def)


@dataclasses.dataclass(frozen=True, slots=True)
class VariableDef:
    """A boxed leaf (Variable); its value is in the State."""

    type: type
    index: int
    metadata: tuple[tuple[str, Any], ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Ref:
    """A second path to an already-seen node or Variable."""

    index: int


@dataclasses.dataclass(frozen=True, slots=True)
class ArrayDef:
    """A raw array leaf (no Variable box); its value is in the State."""


ARRAY = ArrayDef()


@dataclasses.dataclass(frozen=True, slots=True)
class StaticDef:
    """A static value, stored in the GraphDef itself."""

    value: Hashable


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

    __slots__ = ("root", "num_leaves", "_hash")

    def __init__(self, root: Any, num_leaves: int):
        self.root = root
        self.num_leaves = num_leaves
        self._hash = hash(root)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        return (
            isinstance(other, GraphDef)
            and self._hash == other._hash
            and self.root == other.root
        )

    @property
    def type(self) -> type | None:
        root = self.root
        return getattr(root, "type", None)

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
    if isinstance(d, VariableDef):
        return f"{d.type.__name__}"
    if isinstance(d, Ref):
        return f"<shared #{d.index}>"
    if isinstance(d, ArrayDef):
        return "Array"
    return repr(d.value)
