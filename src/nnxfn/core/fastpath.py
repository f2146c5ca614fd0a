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
    same_value,
    static_hash,
)
from nnxfn.core.registry import _CACHE as _IMPLS
from nnxfn.core.registry import KINDS, NodeImpl, key_order, lookup
from nnxfn.core.state import State, wrap as _wrap_state
from nnxfn.core.variable_like import VariableLike

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

    def visit(keys: tuple, vals: tp.Iterable, prefix: tuple | None) -> dict:
        """Walk the children (iteratively: no recursion limit); their State dict."""
        top: dict = {}
        stack = [(iter(zip(keys, vals)), top, prefix)]
        parents: list = []  # (parent dict, key) of every frame above the first
        while stack:
            it, d, prefix = stack[-1]
            for k, v in it:
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
                    if impl.parts is not None:
                        static, sub_keys, sub_vals = impl.parts(v)
                    else:
                        static, sub_keys, sub_vals = node_parts(v, impl)
                    keep(sub_vals)
                    add_op((OP_NODE, t, static, sub_keys, impl))
                    stack.append((iter(zip(sub_keys, sub_vals)), {},
                                  None if prefix is None else prefix + (k,)))
                    parents.append((d, k))
                    break
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
                    stack.append((iter(zip(sub_keys, sub_vals)), {},
                                  None if prefix is None else prefix + (k,)))
                    parents.append((d, k))
                    break
                elif isinstance(v, _g._ARRAY_TYPES):  # a tracer
                    add_op(_ARRAY_OP)
                    add_leaf(v)
                    d[k] = v
                    if prefix is not None:
                        add_path(prefix + (k,))
                elif _g._pytree_children(v) is None:
                    add_op((OP_STATIC, v))
                else:
                    raise _Fallback
            else:  # this frame is done: hang its State on its parent
                stack.pop()
                if parents:
                    parent, key = parents.pop()
                    if d:
                        parent[key] = _wrap_state(d)
        return top

    t = type(node)
    kind = kinds.get(t)
    if kind is None:
        kind = _kind(t)
    if kind != _K_NODE and kind != _K_CONT:
        return None
    add_path = paths.append if paths is not None else None
    try:  # the root as the only child of a container: its State is the root's
        d = visit((0,), (node,), None if paths is None else ())
    except _Fallback:
        return None
    if paths is not None:
        paths[:] = [p[1:] for p in paths]  # drop the root's key
    return GraphDef._from_ops(ops, len(leaves)), d.get(0) or _wrap_state({}), leaves


class LeafMismatch(Exception):
    """A leaf does not fit its GraphDef position (see `unflatten_leaves`)."""


def unflatten_leaves(
    graphdef: GraphDef, leaves: tp.Sequence, *, copy: bool = True, objects: list | None = None
) -> tp.Any:
    """`unflatten` with the leaves given in GraphDef order (as `flatten` lists
    them) instead of by path: no path is built or looked up. Raises
    `LeafMismatch` (no message) if a leaf does not fit; the caller then runs
    the path-based `unflatten` for the error that names the path."""
    if len(leaves) != graphdef.num_leaves:
        raise LeafMismatch
    return _unflatten_ops(graphdef.ops, leaves, copy=copy, trusted=False, objects=objects)


def _unflatten_ops(
    ops: list, leaves: tp.Sequence, *, copy: bool = True, trusted: bool = True,
    objects: list | None = None,
) -> tp.Any:
    """`unflatten` by position. `trusted`: the leaves come from the `split`
    that made `ops` (Variables where `ops` has them), so nothing is checked."""
    next_op = iter(ops).__next__
    next_leaf = iter(leaves).__next__
    if objects is None:
        objects = []  # graph objects and Variables made, by GraphDef index
    add_object = objects.append
    top: list = []
    # One frame per open node/container: [op, object, children still to read, children].
    stack: list = [[None, None, 1, top]]
    while True:
        frame = stack[-1]
        if not frame[2]:  # all children read: finish the node/container
            stack.pop()
            op, v, _, vals = frame
            if op is None:
                return top[0]
            code = op[0]
            if code == OP_NODE:
                _, t, static, keys, impl = op
                if impl.fill is not None:
                    impl.fill(v, keys, vals)
                else:
                    set_child = impl.set_child
                    for k, child in zip(keys, vals):
                        set_child(v, k, child)
            elif code == OP_CONT:
                t = op[1]
                if t is dict:
                    v = dict(zip(op[2], vals))
                else:
                    v = vals if t is list else t(vals)
            else:  # OP_PYTREE
                v = op[1].unflatten(vals)
            parent = stack[-1]
            parent[3].append(v)
            parent[2] -= 1
            continue
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
            v = op[4].create_empty(op[1], op[2])
            add_object(v)  # before its children: they may refer back to it
            stack.append([op, v, len(op[3]), []])
            continue
        elif code == OP_ARRAY:
            v = next_leaf()
            if not trusted and isinstance(v, VariableLike):
                v = v.raw_value
        elif code == OP_STATIC:
            v = op[1]
        elif code == OP_REF:
            v = objects[op[1]]
        elif code == OP_CONT or code == OP_PYTREE:
            stack.append([op, None, len(op[2]), []])
            continue
        else:  # OP_BOXED
            leaf = next_leaf()
            v = leaf.raw_value if isinstance(leaf, VariableLike) else leaf
        frame[3].append(v)
        frame[2] -= 1


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
