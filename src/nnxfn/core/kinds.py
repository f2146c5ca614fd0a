"""What kind of graph value an object is, and its children one level down.

Shared by the one flatten (`walker.py`), the writers
(`update.py`) and the iterations (`traverse.py`).
"""

from __future__ import annotations

import types
import typing as tp

import jax
import numpy as np

from nnxfn.core.registry import KINDS, key_order, lookup
from nnxfn.core.variable_like import VariableLike

_ARRAY_TYPES = (jax.Array, np.ndarray, np.generic, jax.ShapeDtypeStruct, jax.Ref)
_CONTAINERS = (list, tuple, dict)


def is_array(x: tp.Any) -> bool:
    return isinstance(x, _ARRAY_TYPES)


def _container_children(x: tp.Any) -> list[tuple[tp.Any, tp.Any]]:
    if type(x) is dict:
        return [(k, x[k]) for k in sorted(x, key=key_order)]
    return list(enumerate(x))


def _key_of(entry: tp.Any) -> tp.Any:
    for attr in ("key", "idx", "name"):
        if hasattr(entry, attr):
            return getattr(entry, attr)
    return str(entry)


def _pytree_children(x: tp.Any) -> tuple[tp.Any, list[tuple[tp.Any, tp.Any]]] | None:
    """One level of a foreign pytree, or None if `x` is a pytree leaf."""
    pairs, treedef = jax.tree_util.tree_flatten_with_path(x, is_leaf=lambda y: y is not x)
    if treedef.num_nodes == 1 and treedef.num_leaves == 1:
        return None
    return treedef, [(_key_of(p[0]), v) for p, v in pairs]


def children_of(x: tp.Any) -> list[tuple[tp.Any, tp.Any]]:
    """The (key, child) pairs of any graph value; [] for leaves."""
    impl = lookup(type(x))
    if impl is not None:
        return list(impl.children(x))
    if isinstance(x, VariableLike) or is_array(x):
        return []
    if type(x) in _CONTAINERS:
        return _container_children(x)
    found = _pytree_children(x)
    return [] if found is None else found[1]


_K_VAR, _K_NODE, _K_ARRAY, _K_CONT, _K_STATIC, _K_OTHER, _K_AREF = range(7)
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


def _kind(t: type) -> int:
    """How the fast walk treats instances of `t` (same order as `flatten`)."""
    if issubclass(t, VariableLike):
        kind = _K_VAR
    elif lookup(t) is not None:
        kind = _K_NODE
    elif issubclass(t, jax.core.Tracer):  # `isinstance(x, jax.Array)` depends on x
        kind = _K_OTHER
    elif issubclass(t, jax.Ref):  # an array leaf with identity
        kind = _K_AREF
    elif issubclass(t, _ARRAY_TYPES):
        kind = _K_ARRAY
    elif t in _CONTAINERS:
        kind = _K_CONT
    elif issubclass(t, _LEAF_TYPES[:6]) or t in _LEAF_TYPES:
        kind = _K_STATIC  # never a pytree node, always hashable
    else:
        kind = _K_OTHER
    KINDS[t] = kind
    return kind
