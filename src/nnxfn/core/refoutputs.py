"""How `ref=True` Variables cross an `update_context` (Flax's NoUpdate/ArrayRefOutput).

A Variable whose value lives in a `jax.Ref` needs no value returned when the
Ref came from outside: writes went into the Ref itself. So the inner split of
an `update_context` replaces such a value by `NO_UPDATE` (an empty pytree),
and the value of a Ref made inside by `ArrayRefOutput(value)` (a plain array,
which may leave a `jax.jit`). The outer merge undoes both: `NO_UPDATE` keeps
the outer Variable's Ref, `ArrayRefOutput` becomes a new `jax.Ref`.
"""

from __future__ import annotations

import dataclasses
import typing as tp

import jax

from nnxfn.core.graphdef import GraphDef, Ref, VariableDef
from nnxfn.core.variable_like import VariableLike

Key = tp.Hashable
Path = tuple[Key, ...]
Leaf = tp.Any  # an array, a Variable or any other leaf


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True, slots=True)
class NoUpdate:
    """The value of a Ref Variable whose Ref came from outside: nothing to return."""


NO_UPDATE = NoUpdate()


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True, slots=True)
class Repeated:
    """A Ref already returned at an earlier path."""


REPEATED = Repeated()


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, slots=True)
class ArrayRefOutput:
    """The plain value of a Ref made inside; merged outside as a new `jax.Ref`."""

    value: jax.Array


def _holds_ref(leaf: Leaf) -> bool:
    return getattr(leaf, "ref", False) is True and isinstance(leaf.raw_value, jax.Ref)


def outer_refs(outer_objects: tp.Mapping[int, object] | None) -> set[int]:
    """ids of the Refs held by the outer Variables of an update context."""
    if not outer_objects:
        return set()
    return {
        id(obj.raw_value)
        for obj in outer_objects.values()
        if isinstance(obj, VariableLike) and isinstance(obj.raw_value, jax.Ref)
    }


def to_outputs(pairs: list[tuple[Path, Leaf]], known: set[int]) -> list[tuple[Path, Leaf]]:
    """The (path, leaf) pairs of an inner split with each Ref Variable's value
    replaced: `NO_UPDATE` if its Ref is in `known`, else `ArrayRefOutput`."""
    out = []
    for path, leaf in pairs:
        if isinstance(leaf, VariableLike) and _holds_ref(leaf):
            ref = leaf.raw_value
            value = NO_UPDATE if id(ref) in known else ArrayRefOutput(ref[...])
            leaf = type(leaf).from_parts(value, leaf.metadata_items())
        out.append((path, leaf))
    return out


def variable_indices(graphdef: GraphDef) -> dict[Path, int]:
    """path -> GraphDef index of every Variable the GraphDef holds."""
    found: dict[Path, int] = {}
    stack: list[tuple[Leaf, Path]] = [(graphdef.root, ())]
    while stack:
        d, path = stack.pop()
        if isinstance(d, VariableDef):
            found[path] = d.index
        elif not isinstance(d, Ref):
            stack.extend((child, path + (k,)) for k, child in getattr(d, "children", ()))
    return found


def needs_inputs(leaves: tp.Mapping[Path, Leaf]) -> bool:
    return any(
        isinstance(leaf, VariableLike) and isinstance(leaf.raw_value, (NoUpdate, ArrayRefOutput))
        for leaf in leaves.values()
    )


def from_outputs(
    graphdef: GraphDef, leaves: dict[Path, Leaf], reuse: tp.Mapping[int, Leaf]
) -> dict[Path, Leaf]:
    """Undo `to_outputs` for a merge: `NO_UPDATE` takes the Ref of the Variable
    `reuse` holds for that GraphDef index, `ArrayRefOutput` becomes a new Ref."""
    indices: dict[Path, int] | None = None
    out = dict(leaves)
    for path, leaf in leaves.items():
        if not isinstance(leaf, VariableLike):
            continue
        value = leaf.raw_value
        if isinstance(value, ArrayRefOutput):
            out[path] = type(leaf).from_parts(jax.new_ref(value.value), leaf.metadata_items())
        elif isinstance(value, NoUpdate):
            if indices is None:
                indices = variable_indices(graphdef)
            outer = reuse.get(indices.get(path, -1))
            if not isinstance(outer, VariableLike) or not isinstance(outer.raw_value, jax.Ref):
                where = "/".join(map(str, path)) or "<root>"
                raise ValueError(
                    f"merge: the Variable at {where} holds NoUpdate (its jax.Ref came from "
                    "outside), but no outer Variable with a Ref is known for it. Merge it in "
                    "the outer `merge_context(tag, False)` of the same `update_context` that "
                    "split it."
                )
            out[path] = type(leaf).from_parts(outer.raw_value, leaf.metadata_items())
    return out


__all__ = ["NoUpdate", "NO_UPDATE", "Repeated", "REPEATED", "ArrayRefOutput"]
