"""Fast paths of `split`/`state`/`merge` (see the op table below).

Kept apart from `graph.py`, which holds the general implementation these fall
back to for anything unusual, so that errors and edge cases live in one place.
"""

from __future__ import annotations

import types
import typing as tp

import jax
import numpy as np

from nnxfn.core import graph as _g
from nnxfn.core.graphdef import (
    ARRAY,
    ArrayDef,
    BoxedDef,
    ContainerDef,
    GraphDef,
    NodeDef,
    PytreeDef,
    Ref,
    StaticDef,
    VariableDef,
)
from nnxfn.core.registry import _CACHE as _IMPLS
from nnxfn.core.registry import KINDS, NodeImpl, key_order, lookup
from nnxfn.core.state import State, wrap as _wrap_state
from nnxfn.core.variable_like import DataLeaf, VariableLike

Path = tuple[tp.Any, ...]
Leaf = tp.Any

# -- fast paths -------------------------------------------------------------------
# `split`/`state` without filters and `merge` of the State that `split` returned
# skip paths altogether. The GraphDef is first a flat *program* in pre-order
# (its records are built from it only when read, see `GraphDef.root`):
#
#   (OP_VAR, type, metadata)        a Variable; takes the next leaf and index
#   (OP_ARRAY,)                     a raw array; takes the next leaf
#   (OP_BOXED, type)                a boxed leaf of a foreign pytree
#   (OP_STATIC, value)
#   (OP_REF, index)                 an object seen before
#   (OP_NODE, type, static, keys, impl)  a graph node (takes the next index),
#                                   then one op sequence per key
#   (OP_CONT, type, keys)           a list/tuple/dict, then its children
#   (OP_PYTREE, treedef, keys)      a foreign pytree, then its children
#
# Indices are given in pre-order, as `flatten` does. The fast walk handles
# graph nodes, Variables, arrays, plain containers and static values; for
# anything else (foreign pytrees, unhashable statics, ...) it gives up and the
# general `flatten` runs, so the errors and edge cases stay in one place.
OP_VAR, OP_ARRAY, OP_BOXED, OP_STATIC, OP_REF, OP_NODE, OP_CONT, OP_PYTREE = range(8)
_ARRAY_OP = (OP_ARRAY,)
_K_VAR, _K_NODE, _K_ARRAY, _K_CONT, _K_STATIC, _K_OTHER = range(6)
_LEAF_TYPES = (
    type(None), int, float, str, bool, complex,
    types.FunctionType, types.BuiltinFunctionType, np.dtype,
)


class _Fallback(Exception):
    """The fast walk met something only the general `flatten` handles."""


def _kind(t: type) -> int:
    """How the fast walk treats instances of `t` (same order as `flatten`)."""
    if issubclass(t, VariableLike):
        kind = _K_VAR
    elif lookup(t) is not None:
        kind = _K_NODE
    elif issubclass(t, jax.core.Tracer):  # `isinstance(x, jax.Array)` depends on x
        kind = _K_OTHER
    elif issubclass(t, _g._ARRAY_TYPES):
        kind = _K_ARRAY
    elif t in _g._CONTAINERS:
        kind = _K_CONT
    elif issubclass(t, _LEAF_TYPES[:6]) or t in _LEAF_TYPES:
        kind = _K_STATIC  # never a pytree node, always hashable
    else:
        kind = _K_OTHER
    KINDS[t] = kind
    return kind


def _flatten_fast(
    node: tp.Any, paths: list | None = None, copy: bool = True
) -> tuple[GraphDef, State, list] | None:
    """`split(node)` without paths: (graphdef, state, leaves in GraphDef order),
    or None if `node` needs the general `flatten`. Variables are copied unless
    `copy=False`. If `paths` is a list, the path of each leaf is appended to it."""
    kinds = KINDS
    impls = _IMPLS
    index: dict[int, int] = {}  # id -> GraphDef index of Variables and graph nodes
    linking: list = []  # (index, node) of nodes that have links (see `NodeImpl.links`)
    seen = index.setdefault
    alive: list = [node]  # every child sequence walked, so ids stay unique
    keep = alive.append
    ops: list = []
    leaves: list = []
    add_op = ops.append
    add_leaf = leaves.append

    def node_parts(x: tp.Any, impl: NodeImpl) -> tuple[tp.Any, tuple, tp.Any]:
        pairs = list(impl.children(x))
        return impl.static(x), tuple([k for k, _ in pairs]), [v for _, v in pairs]

    def visit_children(keys: tuple, vals: tp.Iterable, prefix: tuple | None) -> dict:
        d = {}
        for k, v in zip(keys, vals):
            t = type(v)
            kind = kinds.get(t)
            if kind is None:
                kind = _kind(t)
            if kind == _K_VAR:
                n = len(index)
                i = seen(id(v), n)
                if i != n:
                    add_op((OP_REF, i))
                    continue
                meta = v.metadata_items()
                add_op((OP_VAR, t, meta))
                leaf = t.from_parts(v.raw_value, meta) if copy else v
                add_leaf(leaf)
                d[k] = leaf
                if prefix is not None:
                    add_path(prefix + (k,))
            elif kind == _K_NODE:
                n = len(index)
                i = seen(id(v), n)
                if i != n:
                    add_op((OP_REF, i))
                    continue
                impl = impls[t]
                if impl.links is not None:
                    linking.append((n, v))
                if impl.parts is not None:
                    static, sub_keys, sub_vals = impl.parts(v)
                else:
                    static, sub_keys, sub_vals = node_parts(v, impl)
                keep(sub_vals)
                add_op((OP_NODE, t, static, sub_keys, impl))
                sub = visit_children(sub_keys, sub_vals, None if prefix is None else prefix + (k,))
                if sub:
                    d[k] = _wrap_state(sub)
            elif kind == _K_ARRAY:
                add_op(_ARRAY_OP)
                add_leaf(v)
                d[k] = v
                if prefix is not None:
                    add_path(prefix + (k,))
            elif kind == _K_STATIC:
                add_op((OP_STATIC, v))
            elif kind == _K_CONT:
                if t is dict:
                    sub_keys = tuple(sorted(v, key=key_order))
                    sub_vals = [v[j] for j in sub_keys]
                else:
                    sub_keys = tuple(range(len(v)))
                    sub_vals = v
                add_op((OP_CONT, t, sub_keys))
                keep(sub_vals)
                sub = visit_children(sub_keys, sub_vals, None if prefix is None else prefix + (k,))
                if sub:
                    d[k] = _wrap_state(sub)
            elif t is DataLeaf:  # a value its node declares a leaf (`nnx.data(1)`)
                v = v.value
                add_op(_ARRAY_OP)
                add_leaf(v)
                d[k] = v
                if prefix is not None:
                    add_path(prefix + (k,))
            elif isinstance(v, _g._ARRAY_TYPES):  # a tracer
                add_op(_ARRAY_OP)
                add_leaf(v)
                d[k] = v
                if prefix is not None:
                    add_path(prefix + (k,))
            elif _g._pytree_children(v) is None and _hashable(v):
                add_op((OP_STATIC, v))
            else:
                raise _Fallback
        return d

    t = type(node)
    kind = kinds.get(t)
    if kind is None:
        kind = _kind(t)
    if kind != _K_NODE and kind != _K_CONT:
        return None
    add_path = paths.append if paths is not None else None
    try:  # the root as the only child of a container: its State is the root's
        d = visit_children((0,), (node,), None if paths is None else ())
    except _Fallback:
        return None
    if paths is not None:
        paths[:] = [p[1:] for p in paths]  # drop the root's key
    links = _g.find_links(linking, index) if linking else ()
    return GraphDef._from_ops(ops, len(leaves), links), d.get(0) or _wrap_state({}), leaves


def _hashable(x: tp.Any) -> bool:
    try:
        hash(x)
    except TypeError:
        return False
    return True


class LeafMismatch(Exception):
    """A leaf does not fit its GraphDef position (see `unflatten_leaves`)."""


def unflatten_leaves(graphdef: GraphDef, leaves: tp.Sequence, *, copy: bool = True) -> tp.Any:
    """`unflatten` with the leaves given in GraphDef order (as `flatten` lists
    them) instead of by path: no path is built or looked up. Raises
    `LeafMismatch` (no message) if a leaf does not fit; the caller then runs
    the path-based `unflatten` for the error that names the path."""
    if len(leaves) != graphdef.num_leaves:
        raise LeafMismatch
    return _unflatten_ops(graphdef.ops, leaves, copy=copy, trusted=False, links=graphdef.links)


def _unflatten_ops(
    ops: list, leaves: tp.Sequence, *, copy: bool = True, trusted: bool = True,
    links: tuple = (),
) -> tp.Any:
    """`unflatten` by position. `trusted`: the leaves come from the `split`
    that made `ops` (Variables where `ops` has them), so nothing is checked.
    `links`: the GraphDef's links, re-made once every object exists."""
    next_op = iter(ops).__next__
    next_leaf = iter(leaves).__next__
    objects: list = []
    add_object = objects.append

    def values(n: int) -> list:
        out = []
        for _ in range(n):
            op = next_op()
            code = op[0]
            if code == OP_VAR:
                leaf = next_leaf()
                if trusted:  # the State's copy of the Variable
                    v = op[1].from_parts(leaf.raw_value, leaf.metadata_items())
                elif isinstance(leaf, VariableLike):
                    if not isinstance(leaf, op[1]):
                        raise LeafMismatch
                    v = op[1].from_parts(leaf.raw_value, leaf.metadata_items()) if copy else leaf
                else:
                    v = op[1].from_parts(leaf, op[2])
                add_object(v)
            elif code == OP_NODE:
                _, t, static, keys, impl = op
                v = impl.create_empty(t, static)
                add_object(v)
                vals = values(len(keys))  # children may refer back to `v`
                if impl.fill is not None:
                    impl.fill(v, keys, vals)
                else:
                    set_child = impl.set_child
                    for k, child in zip(keys, vals):
                        set_child(v, k, child)
            elif code == OP_ARRAY:
                v = next_leaf()
                if not trusted and isinstance(v, VariableLike):
                    v = v.raw_value
            elif code == OP_STATIC:
                v = op[1]
            elif code == OP_REF:
                v = objects[op[1]]
            elif code == OP_CONT:
                t, keys = op[1], op[2]
                vals = values(len(keys))
                if t is dict:
                    v = dict(zip(keys, vals))
                else:
                    v = vals if t is list else t(vals)
            elif code == OP_PYTREE:
                v = op[1].unflatten(values(len(op[2])))
            else:  # OP_BOXED
                leaf = next_leaf()
                v = leaf.raw_value if isinstance(leaf, VariableLike) else leaf
            out.append(v)
        return out

    out = values(1)[0]
    if links:
        _g.apply_links(links, objects)
    return out


def root_from_ops(ops: list) -> tp.Any:
    """The tree of GraphDef records described by a flat program."""
    next_op = iter(ops).__next__
    count = [0]

    def build(op: tuple) -> tp.Any:
        code = op[0]
        if code == OP_VAR:
            i = count[0]
            count[0] += 1
            return VariableDef(op[1], i, op[2])
        if code == OP_ARRAY:
            return ARRAY
        if code == OP_STATIC:
            return StaticDef(op[1])
        if code == OP_REF:
            return Ref(op[1])
        if code == OP_BOXED:
            return BoxedDef(op[1])
        if code == OP_NODE:
            i = count[0]
            count[0] += 1
            return NodeDef(op[1], i, op[2], tuple([(k, build(next_op())) for k in op[3]]))
        kids = tuple([(k, build(next_op())) for k in op[2]])
        return ContainerDef(op[1], kids) if code == OP_CONT else PytreeDef(op[1], kids)

    return build(next_op())


def ops_from_root(root: tp.Any) -> list:
    """The flat program of a tree of GraphDef records."""
    ops: list = []

    def walk(d: tp.Any) -> None:
        if isinstance(d, VariableDef):
            ops.append((OP_VAR, d.type, d.metadata))
        elif isinstance(d, ArrayDef):
            ops.append(_ARRAY_OP)
        elif isinstance(d, StaticDef):
            ops.append((OP_STATIC, d.value))
        elif isinstance(d, Ref):
            ops.append((OP_REF, d.index))
        elif isinstance(d, BoxedDef):
            ops.append((OP_BOXED, d.type))
        else:
            keys = tuple(k for k, _ in d.children)
            if isinstance(d, NodeDef):
                ops.append((OP_NODE, d.type, d.static, keys, lookup(d.type)))
            elif isinstance(d, ContainerDef):
                ops.append((OP_CONT, d.type, keys))
            else:
                ops.append((OP_PYTREE, d.treedef, keys))
            for _, child in d.children:
                walk(child)

    walk(root)
    return ops
