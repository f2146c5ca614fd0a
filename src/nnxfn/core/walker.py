"""The one walk: `walk` visits an object graph once and writes its GraphDef as a
flat program of ops (`program.py` runs a program back).
"""

from __future__ import annotations

import typing as tp

import jax

from nnxfn.core.graphdef import (
    _ARRAY_OP,
    _AREF_OP,
    OP_ALIAS,
    OP_AREF,
    OP_BOXED,
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
    _K_AREF,
    _K_ARRAY,
    _K_CONT,
    _K_NODE,
    _K_STATIC,
    _K_VAR,
    _kind,
    _pytree_children,
)
from nnxfn.core.links import find_links
from nnxfn.core.registry import _CACHE as _IMPLS
from nnxfn.core.registry import KINDS, foreign_leaf_type, key_order
from nnxfn.core.state import State, wrap as _wrap_state
from nnxfn.core.variable_like import DataLeaf

Path = tuple[tp.Any, ...]
Leaf = tp.Any


# -- the walk ---------------------------------------------------------------------
# `flatten`, `split` and `state` all run `walk`. The GraphDef is first a flat
# *program* in pre-order (its records are built from it only when read, see
# `GraphDef.root`):
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
#   (OP_AREF,)                      a bare `jax.Ref`; takes the next leaf
#   (OP_ALIAS, number)              the `number`-th OP_AREF's Ref again (no leaf)
#
# Indices are given in pre-order. `_unflatten_ops` below runs the program back.
# Ops that make a pytree hold graph state (objects with identity):
_OWNING = frozenset({OP_VAR, OP_NODE, OP_REF, OP_AREF, OP_ALIAS})


def walk(
    node: tp.Any,
    *,
    copy: bool = True,
    paths: list | None = None,
    objects: list | None = None,
    containers: list | None = None,
    whole_pytrees: dict | None = None,
) -> tuple[GraphDef, tp.Any, list]:
    """Walk `node` once (iteratively: no recursion limit): (graphdef, its State
    (the leaf itself for a leaf root), the leaves in GraphDef order).

    A Variable or graph node reachable by several paths appears once, at its
    first path in canonical order. Variables are copied unless `copy=False`.
    Optional outputs: `paths` gets each leaf's path; `objects` the live graph
    nodes and Variables in GraphDef index order; `containers` every list/dict
    walked and every mutable foreign pytree holding a Variable or graph node
    (caches use them to notice in-place edits); `whole_pytrees` gets
    {path: pytree} for every outermost foreign pytree holding neither."""
    kinds = KINDS
    impls = _IMPLS
    index: dict[int, int] = {}  # id -> GraphDef index of Variables and graph nodes
    refs: dict[int, int] = {}  # id -> number of the bare jax.Refs (in pre-order)
    linking: list = []  # (index, node) of nodes that have links (see `NodeImpl.links`)
    seen = index.setdefault
    alive: list = [node]  # every child sequence walked, so ids stay unique
    keep = alive.append
    ops: list = []
    leaves: list = []
    add_op = ops.append
    add_leaf = leaves.append
    add_path = paths.append if paths is not None else None
    add_object = objects.append if objects is not None else None
    top: dict = {}
    # One frame per open node/container/pytree:
    # (children iterator, its State dict, path or None, foreign pytree types above, pytree or None, first op)
    stack: list = [(iter(zip((0,), (node,))), top, None if paths is None else (), (), None, 0)]
    trail: list = []  # the keys of the open frames below the root: a path on demand
    parents: list = []  # (parent dict, key) of every frame above the first

    def emit(op: tuple, x: tp.Any, k: tp.Any, d: dict, prefix: tuple | None) -> None:
        """Record a leaf: its op, the leaf, its place in the State (and path)."""
        add_op(op)
        add_leaf(x)
        d[k] = x
        if prefix is not None:
            add_path(prefix + (k,))

    def leaf(v: tp.Any, k: tp.Any, d: dict, prefix: tuple | None, foreign: tuple) -> None:
        """A raw array, boxed if a foreign pytree above it asks (see `registry`)."""
        boxed = foreign_leaf_type((*trail[1:], k), v, foreign) if foreign else None
        if boxed is None:
            emit(_ARRAY_OP, v, k, d, prefix)
        else:
            emit((OP_BOXED, boxed), boxed.from_parts(v, ()), k, d, prefix)

    def ref_leaf(v: tp.Any, k: tp.Any, d: dict, prefix: tuple | None) -> None:
        """A bare `jax.Ref`: one leaf however many paths reach it."""
        number = refs.get(id(v))
        if number is None:
            refs[id(v)] = len(refs)
            emit(_AREF_OP, v, k, d, prefix)
        else:
            add_op((OP_ALIAS, number))

    while stack:
        it, d, prefix, foreign, pytree, start = stack[-1]
        for k, v in it:
            t = type(v)
            kind = kinds.get(t)
            if kind is None:
                kind = _kind(t)
            if kind == _K_VAR or kind == _K_NODE:  # has identity: a back-reference if seen
                n = len(index)
                i = seen(id(v), n)
                if i != n:
                    add_op((OP_REF, i))
                    continue
                if add_object is not None:
                    add_object(v)
            if kind == _K_VAR:
                meta = v.metadata_items()
                emit((OP_VAR, t, meta), t.from_parts(v.raw_value, meta) if copy else v, k, d, prefix)
                continue
            if kind == _K_ARRAY:
                leaf(v, k, d, prefix, foreign)
                continue
            if kind == _K_AREF:
                ref_leaf(v, k, d, prefix)
                continue
            if kind == _K_STATIC:
                add_op((OP_STATIC, v))
                continue
            if kind == _K_NODE:
                impl = impls[t]
                if impl.links is not None:
                    linking.append((n, v))
                if impl.parts is not None:
                    static, sub_keys, sub_vals = impl.parts(v)
                else:
                    pairs = list(impl.children(v))
                    static, sub_keys, sub_vals = (
                        impl.static(v),
                        tuple([p[0] for p in pairs]),
                        [p[1] for p in pairs],
                    )
                add_op((OP_NODE, t, static, sub_keys, impl))
                sub_foreign, sub_pytree = (), None
            elif kind == _K_CONT:
                if containers is not None and t is not tuple:
                    containers.append(v)
                if t is dict:
                    sub_keys = tuple(sorted(v, key=key_order))
                    sub_vals = [v[j] for j in sub_keys]
                else:
                    sub_keys = tuple(range(len(v)))
                    sub_vals = v
                add_op((OP_CONT, t, sub_keys))
                sub_foreign, sub_pytree = foreign, None
            elif t is DataLeaf:  # a value its node declares a leaf (`nnx.data(1)`)
                leaf(v.value, k, d, prefix, ())
                continue
            elif isinstance(v, _ARRAY_TYPES):  # a tracer
                if isinstance(v, jax.Ref):
                    ref_leaf(v, k, d, prefix)
                else:
                    leaf(v, k, d, prefix, foreign)
                continue
            else:
                found = _pytree_children(v)
                if found is None:
                    add_op((OP_STATIC, v))  # hashed by contents if unhashable
                    continue
                treedef, pairs = found
                sub_keys = tuple([p[0] for p in pairs])
                sub_vals = [p[1] for p in pairs]
                add_op((OP_PYTREE, treedef, sub_keys))
                sub_foreign, sub_pytree = foreign + (t,), v
            keep(sub_vals)
            stack.append(
                (
                    iter(zip(sub_keys, sub_vals)),
                    {},
                    None if prefix is None else prefix + (k,),
                    sub_foreign,
                    sub_pytree,
                    len(ops),
                )
            )
            parents.append((d, k))
            trail.append(k)
            break
        else:  # this frame is done: hang its State on its parent
            stack.pop()
            if pytree is not None and (whole_pytrees is not None or containers is not None):
                owning = any(op[0] in _OWNING for op in ops[start:])
                if whole_pytrees is not None and not owning and len(foreign) == 1:
                    whole_pytrees[tuple(trail[1:])] = pytree
                if containers is not None and owning and _mutable(pytree):
                    containers.append(pytree)
            if parents:
                parent, key = parents.pop()
                trail.pop()
                if d:
                    parent[key] = _wrap_state(d)
    if paths is not None:
        paths[:] = [p[1:] for p in paths]  # drop the root's key
    links = find_links(linking, index) if linking else ()
    root = top.get(0)
    if root is None and (ops[0][0] in (OP_NODE, OP_CONT, OP_PYTREE)):
        root = _wrap_state({})
    return GraphDef._from_ops(ops, len(leaves), links), root, leaves


def _mutable(x: tp.Any) -> bool:
    """Whether a foreign pytree may be edited in place (tuples, States and frozen
    dataclasses such as Equinox modules cannot, short of `object.__setattr__`)."""
    if isinstance(x, (tuple, State)):
        return False
    params = getattr(type(x), "__dataclass_params__", None)
    return not (params is not None and params.frozen)
