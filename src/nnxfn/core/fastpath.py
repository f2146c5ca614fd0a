"""Fast paths of `split`/`state`/`merge` (see the op table below).

Kept apart from `graph.py`, which holds the general implementation these fall
back to for anything unusual, so that errors and edge cases live in one place.
"""

from __future__ import annotations

import typing as tp


from nnxfn.core.graphdef import (
    _ARRAY_OP,
    OP_ARRAY,
    OP_CONT,
    OP_NODE,
    OP_PYTREE,
    OP_REF,
    OP_STATIC,
    OP_VAR,
    GraphDef,
)
from nnxfn.core.kinds import (
    _ARRAY_TYPES,
    _K_ARRAY,
    _K_CONT,
    _K_NODE,
    _K_STATIC,
    _K_VAR,
    _kind,
    _pytree_children,
)
from nnxfn.core.links import apply_links, find_links
from nnxfn.core.registry import _CACHE as _IMPLS
from nnxfn.core.registry import KINDS, NodeImpl, key_order
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
class _Fallback(Exception):
    """The fast walk met something only the general `flatten` handles."""


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
                    if impl.links is not None:
                        linking.append((n, v))
                    if impl.parts is not None:
                        static, sub_keys, sub_vals = impl.parts(v)
                    else:
                        static, sub_keys, sub_vals = node_parts(v, impl)
                    keep(sub_vals)
                    add_op((OP_NODE, t, static, sub_keys, impl))
                    stack.append(
                        (iter(zip(sub_keys, sub_vals)), {}, None if prefix is None else prefix + (k,))
                    )
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
                    stack.append(
                        (iter(zip(sub_keys, sub_vals)), {}, None if prefix is None else prefix + (k,))
                    )
                    parents.append((d, k))
                    break
                elif t is DataLeaf:  # a value its node declares a leaf (`nnx.data(1)`)
                    v = v.value
                    add_op(_ARRAY_OP)
                    add_leaf(v)
                    d[k] = v
                    if prefix is not None:
                        add_path(prefix + (k,))
                elif isinstance(v, _ARRAY_TYPES):  # a tracer
                    add_op(_ARRAY_OP)
                    add_leaf(v)
                    d[k] = v
                    if prefix is not None:
                        add_path(prefix + (k,))
                elif _pytree_children(v) is None:
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
    links = find_links(linking, index) if linking else ()
    return GraphDef._from_ops(ops, len(leaves), links), d.get(0) or _wrap_state({}), leaves


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
    return _unflatten_ops(
        graphdef.ops, leaves, copy=copy, trusted=False, objects=objects, links=graphdef.links
    )


def _unflatten_ops(
    ops: list,
    leaves: tp.Sequence,
    *,
    copy: bool = True,
    trusted: bool = True,
    objects: list | None = None,
    links: tuple = (),
) -> tp.Any:
    """`unflatten` by position. `trusted`: the leaves come from the `split`
    that made `ops` (Variables where `ops` has them), so nothing is checked.
    `links`: the GraphDef's links, re-made once every object exists."""
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
                if links:
                    apply_links(links, objects)
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
