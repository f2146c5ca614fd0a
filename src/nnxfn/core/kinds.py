"""What kind of graph value an object is, and its children one level down.

Shared by the one flatten (`walker.py`), the writers (`writes.py`) and
the iterations (`traverse.py`). `kind_of_type` sorts a type into one of the
`K_*` kinds the walk dispatches on (cached per type in `registry.KINDS`).
"""

from __future__ import annotations

import types
import typing as tp

import jax
import numpy as np

from nnxfn.core.registry import KINDS, key_order, lookup
from nnxfn.core.variable_like import VariableLike

ARRAY_TYPES = (jax.Array, np.ndarray, np.generic, jax.ShapeDtypeStruct, jax.Ref)
CONTAINERS = (list, tuple, dict)
Key = tp.Hashable
Child = tp.Any  # a child value: a graph node, Variable, array, container or static
Children = list[tuple[Key, Child]]


def is_array(x: object) -> bool:
    return isinstance(x, ARRAY_TYPES)


def container_children(x: list[Child] | tuple[Child, ...] | dict[Key, Child]) -> Children:
    """The (key, child) pairs of a list, tuple or dict (dict keys in canonical order)."""
    if isinstance(x, dict):
        return [(k, x[k]) for k in sorted(x, key=key_order)]
    return list(enumerate(x))


def key_of(entry: object) -> Key:
    """The plain key of one JAX key-path entry (`DictKey`, `SequenceKey`, `GetAttrKey`, ...)."""
    for attr in ("key", "idx", "name"):
        if hasattr(entry, attr):
            found: Key = getattr(entry, attr)
            return found
    return str(entry)


class PytreeChildren(tp.NamedTuple):
    """One level of a foreign pytree: its treedef and (key, child) pairs."""

    treedef: jax.tree_util.PyTreeDef
    children: Children


def pytree_children(x: object) -> PytreeChildren | None:
    """One level of a foreign pytree, or None if `x` is a pytree leaf."""
    pairs, treedef = jax.tree_util.tree_flatten_with_path(x, is_leaf=lambda y: y is not x)
    if len(pairs) == 1 and jax.tree_util.treedef_is_leaf(treedef):  # x itself is the one leaf
        return None
    return PytreeChildren(
        treedef, [(key_of(entry), v) for (entry,), v in pairs]
    )  # one level: paths of one key


def children_of(x: Child) -> Children:
    """The (key, child) pairs of any graph value; [] for leaves."""
    impl = lookup(type(x))
    if impl is not None:
        return list(impl.children(x))
    if isinstance(x, VariableLike) or is_array(x):
        return []
    if type(x) in CONTAINERS:
        return container_children(x)
    found = pytree_children(x)
    return [] if found is None else found.children


# How the walk treats a type's instances (`kind_of_type`):
K_VAR = 0  # a Variable
K_NODE = 1  # a registered graph node
K_ARRAY = 2  # an array
K_CONT = 3  # a list, tuple or dict
K_STATIC = 4  # a plain static value (never a pytree node, always hashable)
K_OTHER = 5  # decided per value: a tracer, a foreign pytree or a static
K_AREF = 6  # a bare `jax.Ref`
_LEAF_TYPES = (
    type(None),
    int,
    float,
    str,
    bool,
    complex,
    types.FunctionType,
    types.BuiltinFunctionType,
    np.dtype,
)


def kind_of_type(t: type) -> int:
    """How the walk treats instances of `t` (one of the `K_*` kinds), cached in `registry.KINDS`."""
    if issubclass(t, VariableLike):
        kind = K_VAR
    elif lookup(t) is not None:
        kind = K_NODE
    elif issubclass(t, jax.core.Tracer):  # `isinstance(x, jax.Array)` depends on x
        kind = K_OTHER
    elif issubclass(t, jax.Ref):  # an array leaf with identity
        kind = K_AREF
    elif issubclass(t, ARRAY_TYPES):
        kind = K_ARRAY
    elif t in CONTAINERS:
        kind = K_CONT
    elif issubclass(t, _LEAF_TYPES[:6]) or t in _LEAF_TYPES:
        kind = K_STATIC
    else:
        kind = K_OTHER
    return KINDS.put(t, kind)
