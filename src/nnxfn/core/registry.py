"""Node-type registry: how an object type joins the graph.

A registered *graph node* has identity: the same object reachable by two
paths is one node in the GraphDef (later paths hold a back-reference), and
cycles are allowed. Lists, tuples, dicts and other JAX pytrees are not
registered: they are walked as values (no identity), see `walker.py`.

Lookups are cached per type (`IMPLS`, and `KINDS` for `kinds.kind_of_type`)
in `caches.CacheTable`s; registering a type clears every cache.
"""

from __future__ import annotations

import builtins
import dataclasses
import typing as tp
from typing import Any, Callable, Hashable, Iterable

from nnxfn.core import caches
from nnxfn.core.variable_like import VariableLike

Key = Any  # str attribute name, int index or dict key (callbacks take their own key type)
Node = Any  # an instance of a registered type (the callbacks below take their own type)
Child = Any  # a child value: a graph node, Variable, array, container or static value


@dataclasses.dataclass(frozen=True, slots=True)
class NodeImpl:
    """How the core treats one graph-node type.

    children(node) -> iterable of (key, value), in a canonical order.
    create_empty(type, static) -> a new instance, without calling __init__.
    set_child(node, key, value) -> None.
    del_child(node, key) -> None.
    static(node) -> hashable per-node data stored in the GraphDef.

    Optional fast paths (used by `split`/`merge`; must agree with the above):
    parts(node) -> (static(node), keys, values): the keys of `children(node)`
        as a tuple, and their values in the same order.
    fill(node, keys, values) -> None: set every child of a node just made by
        `create_empty`, as `set_child` for each key in order would.
    builder(type, static, keys) -> make(groups) -> list of nodes: for each
        sequence of child values in `groups`, `create_empty` then `fill`;
        made once per GraphDef position (or run of equal positions).

    Optional non-owning references (e.g. an optimizer's model):
    links(node) -> iterable of (key, target): objects the node refers to
        without owning them. They are not walked and hold no State; a link
        is kept in the GraphDef only if its target is part of the same
        flatten (as a graph node or Variable), and re-made by `unflatten`.
    set_link(node, key, target) -> None: re-make one link after unflatten.
    """

    type: builtins.type
    children: Callable[[Node], Iterable[tuple[Key, Child]]]
    create_empty: Callable[[builtins.type, Hashable], Node]
    set_child: Callable[[Node, Key, Child], None]
    del_child: Callable[[Node, Key], None]
    static: Callable[[Node], Hashable] = lambda node: None
    parts: Callable[[Node], tuple[Hashable, tuple[Key, ...], tp.Sequence[Child]]] | None = None
    fill: Callable[[Node, tuple[Key, ...], tp.Sequence[Child]], None] | None = None
    builder: (
        Callable[
            [builtins.type, Hashable, tuple[Key, ...]],
            Callable[[tp.Iterable[tp.Sequence[Child]]], list[Node]],
        ]
        | None
    ) = None
    links: Callable[[Node], Iterable[tuple[Key, Child]]] | None = None
    set_link: Callable[[Node, Key, Node], None] | None = None


_REGISTRY: dict[type, NodeImpl] = {}
# type -> its NodeImpl (a registered base's, retyped), or None: `lookup`'s answers.
IMPLS: caches.CacheTable[type, NodeImpl | None] = caches.CacheTable("registry.IMPLS")
# type -> how the walk treats its instances (a `kinds.K_*`), derived from the registry.
KINDS: caches.CacheTable[type, int] = caches.CacheTable("registry.KINDS")


def register_node_type(impl: NodeImpl) -> None:
    """Register `impl.type` (and, unless overridden, its subclasses).

    Every cache is cleared: per-type answers derived from the registry
    (here and in other modules' `caches.CacheTable`s) may have changed."""
    _REGISTRY[impl.type] = impl
    caches.clear()


def is_registered(node_type: type) -> bool:
    """True if `node_type` itself (not a base class) was registered."""
    return node_type in _REGISTRY


def lookup(node_type: type) -> NodeImpl | None:
    """How the core treats instances of `node_type`: the NodeImpl of its
    nearest registered base (for `node_type` itself), or None."""
    try:
        return IMPLS[node_type]
    except KeyError:
        pass
    found = None
    for base in node_type.__mro__:
        if base in _REGISTRY:
            found = dataclasses.replace(_REGISTRY[base], type=node_type)
            break
    return IMPLS.put(node_type, found)


def is_registered_node(x: object) -> bool:
    """Whether `x` is an instance of a registered graph-node type (Variables are not)."""
    return lookup(type(x)) is not None


def key_order(key: Key) -> tuple[int, int | str]:
    """Canonical, type-aware sort key: ints before strings before others."""
    if isinstance(key, bool):
        return (2, str(key))
    if isinstance(key, int):
        return (0, key)
    if isinstance(key, str):
        return (1, key)
    return (2, repr(key))


# -- leaves of foreign pytrees ------------------------------------------------
LeafClassifier = Callable[[tuple[Key, ...], Child, tuple[type, ...]], "type[VariableLike] | None"]


class _Classifier:
    """The process-wide foreign-leaf classifier (None: arrays stay raw)."""

    __slots__ = ("fn",)

    def __init__(self) -> None:
        self.fn: LeafClassifier | None = None


_CLASSIFIER = _Classifier()


def set_foreign_leaf_classifier(fn: LeafClassifier | None) -> LeafClassifier | None:
    """Choose a Variable type for arrays inside foreign pytrees.

    `fn(path, array, ancestors)` gets the array's path and the types of the
    foreign pytree nodes above it (innermost last) and returns a VariableLike
    type to box it as in the State, or None to keep it a raw array. Returns
    the previous classifier.
    """
    previous = _CLASSIFIER.fn
    _CLASSIFIER.fn = fn
    return previous


def foreign_leaf_type(
    path: tuple[Key, ...], value: object, ancestors: tuple[type, ...]
) -> type[VariableLike] | None:
    """The Variable type the classifier boxes an array of a foreign pytree as, or None."""
    fn = _CLASSIFIER.fn
    return None if fn is None else fn(path, value, ancestors)
