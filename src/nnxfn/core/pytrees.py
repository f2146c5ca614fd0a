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

import jax
import numpy as np

from nnxfn.core.kinds import key_of, pytree_children
from nnxfn.core.graphdef import NodeDef, Ref, VariableDef
from nnxfn.core.registry import NodeImpl, is_registered, key_order, lookup, register_node_type
from nnxfn.core.treegraph import TreeNodeDef
from nnxfn.core.variable_like import VariableLike

Key = tp.Any  # a child's key (callbacks take their own key type)
Node = tp.Any  # an instance of the registered type (callbacks take their own type)
Child = tp.Any  # a child value


NodeRef = Ref


class PytreeMeta(tp.NamedTuple):
    """How to put sorted `(key, child)` pairs back into the original pytree."""

    key_index: tuple[tuple[Key, int], ...]
    treedef: jax.tree_util.PyTreeDef


def flatten_pytree(pytree: object) -> tuple[list[tuple[Key, Child]], PytreeMeta]:
    """One level of `pytree`: `(key, child)` pairs sorted by key, and its metadata."""
    found = pytree_children(pytree)
    if found is None:
        raise ValueError(f"flatten_pytree: {type(pytree).__name__} is a leaf, not a pytree node")
    treedef, pairs = found
    index = tuple((k, i) for i, (k, _) in enumerate(pairs))
    return sorted(pairs, key=lambda kv: key_order(kv[0])), PytreeMeta(index, treedef)


def unflatten_pytree(pairs: tp.Iterable[tuple[Key, Child]], meta: PytreeMeta) -> Node:
    """The inverse of `flatten_pytree`."""
    order = dict(meta.key_index)
    ordered = sorted(pairs, key=lambda kv: order[kv[0]])
    return meta.treedef.unflatten([v for _, v in ordered])


def is_pytree_node(x: object, *, check_graph_registry: bool = True) -> bool:
    """True for containers and foreign pytrees that have children (graph nodes such as
    Modules too, if `check_graph_registry=False`: they are JAX pytrees as well)."""
    if isinstance(x, VariableLike) or (check_graph_registry and lookup(type(x)) is not None):
        return False
    if type(x) in (list, tuple, dict):
        return True
    return pytree_children(x) is not None


def is_node(x: object) -> bool:
    """True for graph nodes and pytree nodes (not Variables or leaves)."""
    return lookup(type(x)) is not None or is_pytree_node(x)


def is_node_leaf(x: object) -> bool:
    """True for what a graph holds as a leaf: Variables, arrays and `jax.Ref`s."""
    return isinstance(x, (VariableLike, jax.Array, np.ndarray, jax.Ref))


def is_node_type(x: type) -> bool:
    """True for registered graph-node types (Modules, ...) and the containers walked
    as pytree nodes (list, tuple, dict)."""
    return lookup(x) is not None or x in (list, tuple, dict)


def register_graph_node_type(
    type: type,
    flatten: tp.Callable[[Node], tuple[tp.Sequence[tuple[Key, Child]], tp.Hashable]],
    set_key: tp.Callable[[Node, Key, Child], None],
    pop_key: tp.Callable[[Node, Key], Child],
    create_empty: tp.Callable[[tp.Hashable], Node],
    clear: tp.Callable[[Node], None],
    init: tp.Callable[[Node, tp.Iterable[tuple[Key, Child]]], None],
) -> None:
    """Make `type` (and its subclasses) a graph node, with Flax's callbacks:
    `flatten(node) -> ((key, child) pairs, hashable aux data)`, `create_empty(aux)`,
    `init(node, pairs)` fills a new node, `set_key`/`pop_key` edit one child (`clear`
    is accepted; nnxfn edits children one by one). Its instances then have identity
    in `split`/`merge` and every transform, like Modules.
    """
    if is_registered(type):
        raise ValueError(f"Node type {type} is already registered.")
    register_node_type(
        NodeImpl(
            type=type,
            children=lambda node: _children(flatten(node)),
            static=lambda node: _static(flatten(node)),
            create_empty=lambda cls, aux: create_empty(aux),
            set_child=set_key,
            del_child=pop_key,
            fill=lambda node, keys, values: init(node, zip(keys, values)),
        )
    )


def jax_to_nnx_path(jax_path: tuple) -> tuple:
    """A JAX key path as nnx path parts (attribute names, keys, indices)."""
    return tuple(key_of(k) for k in jax_path)


__all__ = ["TreeNodeDef", "NodeRef", "NodeDef", "VariableDef"]


def _children(
    flat: tuple[tp.Iterable[tuple[Key, Child]], tp.Hashable],
) -> tp.Iterable[tuple[Key, Child]]:
    """The (key, child) pairs of a registered `flatten(node)` result."""
    children, _ = flat
    return children


def _static(flat: tuple[tp.Iterable[tuple[Key, Child]], tp.Hashable]) -> tp.Hashable:
    """The static data of a registered `flatten(node)` result."""
    _, static = flat
    return static
