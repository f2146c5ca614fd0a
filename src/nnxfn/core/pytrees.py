"""One level of a foreign JAX pytree as `(key, child)` pairs, and the names
Flax's `graphlib` gives GraphDef records.

>>> import collections
>>> P = collections.namedtuple("P", ["y", "x"])
>>> pairs, meta = flatten_pytree(P(1, 2)); pairs
[('x', 2), ('y', 1)]
>>> unflatten_pytree(pairs, meta)
P(y=1, x=2)
"""

from __future__ import annotations

import typing as tp


from nnxfn.core import kinds as _graph
from nnxfn.core.graphdef import NodeDef, Ref, VariableDef
from nnxfn.core.treegraph import TreeNodeDef
from nnxfn.core.registry import key_order, lookup
from nnxfn.core.variable_like import VariableLike


NodeRef = Ref


class PytreeMeta(tp.NamedTuple):
    """How to put sorted `(key, child)` pairs back into the original pytree."""

    key_index: tuple[tuple[tp.Any, int], ...]
    treedef: tp.Any


def flatten_pytree(pytree: tp.Any) -> tuple[list[tuple[tp.Any, tp.Any]], PytreeMeta]:
    """One level of `pytree`: `(key, child)` pairs sorted by key, and its metadata."""
    found = _graph._pytree_children(pytree)
    if found is None:
        raise ValueError(f"flatten_pytree: {type(pytree).__name__} is a leaf, not a pytree node")
    treedef, pairs = found
    index = tuple((k, i) for i, (k, _) in enumerate(pairs))
    return sorted(pairs, key=lambda kv: key_order(kv[0])), PytreeMeta(index, treedef)


def unflatten_pytree(pairs: tp.Iterable[tuple[tp.Any, tp.Any]], meta: PytreeMeta) -> tp.Any:
    """The inverse of `flatten_pytree`."""
    order = dict(meta.key_index)
    ordered = sorted(pairs, key=lambda kv: order[kv[0]])
    return meta.treedef.unflatten([v for _, v in ordered])


def is_pytree_node(x: tp.Any) -> bool:
    """True for containers and foreign pytrees that have children."""
    if isinstance(x, VariableLike) or lookup(type(x)) is not None:
        return False
    if type(x) in (list, tuple, dict):
        return True
    return _graph._pytree_children(x) is not None


def is_node(x: tp.Any) -> bool:
    """True for graph nodes and pytree nodes (not Variables or leaves)."""
    return lookup(type(x)) is not None or is_pytree_node(x)


def jax_to_nnx_path(jax_path: tuple) -> tuple:
    """A JAX key path as nnx path parts (attribute names, keys, indices)."""
    return tuple(_graph._key_of(k) for k in jax_path)


__all__ = ["TreeNodeDef", "NodeRef", "NodeDef", "VariableDef"]
