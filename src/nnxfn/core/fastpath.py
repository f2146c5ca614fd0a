"""Fast paths of `split`/`state`/`merge` (see the op table below).

Kept apart from `graph.py`, which holds the general implementation these fall
back to for anything unusual, so that errors and edge cases live in one place.
"""

from __future__ import annotations

import operator
import typing as tp
from itertools import islice


from nnxfn.core.graphdef import (
    _ARRAY_OP,
    OP_ARRAY,
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
from nnxfn.core.registry import KINDS, NodeImpl, foreign_leaf_type, key_order
from nnxfn.core.state import State, wrap as _wrap_state
from nnxfn.core.variable_like import DataLeaf, VariableLike

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
#
# Indices are given in pre-order. `_unflatten_ops` below runs the program back.
_OWNING = frozenset({OP_VAR, OP_NODE, OP_REF})  # ops that make a pytree hold graph state


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

    def leaf(v: tp.Any, k: tp.Any, d: dict, prefix: tuple | None, foreign: tuple) -> None:
        boxed = foreign_leaf_type((*trail[1:], k), v, foreign) if foreign else None
        if boxed is None:
            add_op(_ARRAY_OP)
        else:
            add_op((OP_BOXED, boxed))
            v = boxed.from_parts(v, ())
        add_leaf(v)
        d[k] = v
        if prefix is not None:
            add_path(prefix + (k,))

    while stack:
        it, d, prefix, foreign, pytree, start = stack[-1]
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
                if add_object is not None:
                    add_object(v)
                meta = v.metadata_items()
                add_op((OP_VAR, t, meta))
                x = t.from_parts(v.raw_value, meta) if copy else v
                add_leaf(x)
                d[k] = x
                if prefix is not None:
                    add_path(prefix + (k,))
                continue
            if kind == _K_ARRAY:
                if foreign:
                    leaf(v, k, d, prefix, foreign)
                    continue
                add_op(_ARRAY_OP)
                add_leaf(v)
                d[k] = v
                if prefix is not None:
                    add_path(prefix + (k,))
                continue
            if kind == _K_STATIC:
                add_op((OP_STATIC, v))
                continue
            if kind == _K_NODE:
                n = len(index)
                i = seen(id(v), n)
                if i != n:
                    add_op((OP_REF, i))
                    continue
                if add_object is not None:
                    add_object(v)
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


class LeafMismatch(Exception):
    """A leaf does not fit its GraphDef position (see `unflatten_leaves`);
    `args[0]`, if given, is the leaf's position."""


def unflatten_leaves(
    graphdef: GraphDef, leaves: tp.Sequence, *, copy: bool = True, objects: list | None = None
) -> tp.Any:
    """`unflatten` with the leaves given in GraphDef order (as `flatten` lists
    them) instead of by path: no path is built or looked up. Raises
    `LeafMismatch` (no message) if a leaf does not fit; the caller then runs
    the path-based `unflatten` for the error that names the path."""
    if len(leaves) != graphdef.num_leaves:
        raise LeafMismatch
    return _unflatten_ops(graphdef, leaves, copy=copy, trusted=False, objects=objects)


OP_LEAFNODE = -1  # a graph node whose children are all single ops (see `_plan`)
_SINGLE = frozenset({OP_VAR, OP_ARRAY, OP_BOXED, OP_STATIC, OP_REF})


def _plan(ops: list) -> list:
    """`ops` with every graph node whose children are all single ops (Variables,
    arrays, statics, back-references: most layers) folded into one
    `(OP_LEAFNODE, type, static, keys, impl, child ops, picker, make)`: it is
    built without a frame of its own (`_picker`; `make` from `NodeImpl.builder`)."""
    out: list = []
    i, n = 0, len(ops)
    index = 0  # GraphDef index of the next Variable or graph node
    while i < n:
        op = ops[i]
        i += 1
        code = op[0]
        if code == OP_NODE:
            count = len(op[3])
            kids = ops[i : i + count]
            if (
                len(kids) == count
                and all(k[0] in _SINGLE for k in kids)
                and (OP_REF, index) not in kids  # it holds itself: made before its children
            ):
                impl = op[4]
                make = impl.builder(op[1], op[2], op[3]) if impl.builder is not None else None
                out.append((OP_LEAFNODE, *op[1:], tuple(kids), _picker(kids), make))
                i += count
                index += 1 + sum(k[0] == OP_VAR for k in kids)
                continue
        if code == OP_VAR or code == OP_NODE:
            index += 1
        out.append(op)
    return out


def _picker(kids: list) -> tuple[int, tuple, tp.Callable] | None:
    """For children that are only Variables and statics: (number of Variables,
    the static values, a getter that orders `variables + statics` by key),
    so a trusted merge fills the node with C-level calls; else None."""
    if not all(k[0] == OP_VAR or k[0] == OP_STATIC for k in kids):
        return None
    nvars = sum(k[0] == OP_VAR for k in kids)
    statics = tuple(k[1] for k in kids if k[0] == OP_STATIC)
    order, v, st = [], 0, nvars
    for k in kids:
        if k[0] == OP_VAR:
            order.append(v)
            v += 1
        else:
            order.append(st)
            st += 1
    if len(order) < 2:  # itemgetter of one index gives the item, not a tuple
        return nvars, statics, lambda seq: tuple(seq)
    return nvars, statics, operator.itemgetter(*order)


def _unflatten_ops(
    graphdef: GraphDef,
    leaves: tp.Sequence,
    *,
    copy: bool = True,
    trusted: bool = True,
    objects: list | None = None,
    reuse: tp.Mapping[int, tp.Any] | None = None,
    whole: tp.Container[int] = (),
    adopt: bool = False,
) -> tp.Any:
    """Run the program of `graphdef` with `leaves` in its leaf order: the one
    unflatten (`merge`, `unflatten` and the transforms all come here).

    `trusted`: the leaves come from the `split` that made `graphdef`
    (Variables where it has them), so nothing is checked; else a leaf that
    does not fit raises `LeafMismatch(position)`. `reuse` maps GraphDef
    indices to existing objects updated in place instead of made (how
    transforms commit onto the caller's objects). `whole`: ids of pytree ops
    given as one leaf (see `walk(whole_pytrees=...)`). `objects` receives the
    objects by GraphDef index. `adopt`: Variables used as they are (not
    copied) are told they join a graph `merge` builds (`VariableLike.adopt`)."""
    plan = graphdef._plan
    if plan is None:
        plan = graphdef._plan = _plan(graphdef.ops)
    plan_iter = iter(plan)
    next_op = plan_iter.__next__
    leaf_iter = iter(leaves)
    next_leaf = leaf_iter.__next__
    count = len(leaves)
    shared = trusted and not copy and not reuse  # the State's own Variables go into the new graph
    if objects is None:
        objects = []  # graph objects and Variables made, by GraphDef index
    add_object = objects.append

    def position() -> int:
        return count - leaf_iter.__length_hint__() - 1

    def single(op: tuple) -> tp.Any:
        """The value of one Variable/array/static/back-reference op."""
        code = op[0]
        if code == OP_VAR:
            leaf = next_leaf()
            if trusted:  # the Variable `split` put in the State
                v = op[1].from_parts(leaf.raw_value, leaf.metadata_items()) if copy else leaf
                add_object(v)
                return v
            boxed = isinstance(leaf, VariableLike)
            if boxed and not isinstance(leaf, op[1]):
                raise LeafMismatch(position())
            value, meta = (leaf.raw_value, leaf.metadata_items()) if boxed else (leaf, op[2])
            v = reuse.get(len(objects)) if reuse else None
            if v is not None:  # commit in place
                v.set_raw(value)
                if v.metadata_items() != meta:
                    v.set_metadata_items(meta)
            elif boxed and not copy:
                v = leaf
                if adopt:
                    v.adopt()
            else:
                v = op[1].from_parts(value, meta)
            add_object(v)
            return v
        if code == OP_ARRAY or code == OP_BOXED:
            v = next_leaf()
            if not trusted and isinstance(v, VariableLike):
                v = v.raw_value
            return v
        if code == OP_STATIC:
            return op[1]
        return objects[op[1]]  # OP_REF

    def open_node(op: tuple) -> tuple[tp.Any, bool]:
        """A new (or, to commit into, the reused) node of a NODE/LEAFNODE op."""
        v = reuse.get(len(objects)) if reuse else None
        if v is None:
            v = op[4].create_empty(op[1], op[2])
            add_object(v)  # before its children: they may refer back to it
            return v, False
        impl, keep = op[4], set(op[3])
        for k in [k for k, _ in impl.children(v) if k not in keep]:
            impl.del_child(v, k)
        add_object(v)
        return v, True

    top: list = []
    # One frame per open node/container: [op, object, children still to read, children, reused].
    stack: list = [[None, None, 1, top, False]]
    while True:
        frame = stack[-1]
        if not frame[2]:  # all children read: finish the node/container
            stack.pop()
            op, v, _, vals, reused = frame
            if op is None:
                if graphdef.links:
                    apply_links(graphdef.links, objects)
                return top[0]
            code = op[0]
            if code == OP_NODE:
                _fill(op[4], v, op[3], vals, reused)
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
        if code == OP_LEAFNODE:
            picker = op[6]
            make = op[7]
            if make is not None and not (reuse and len(objects) in reuse):
                at = len(objects)
                add_object(None)  # its index comes before its Variables'
                if shared and picker is not None:
                    new = list(islice(leaf_iter, picker[0]))
                    objects.extend(new)
                    vals = picker[2](new + list(picker[1])) if picker[1] else new
                else:
                    vals = [single(k) for k in op[5]]
                v = objects[at] = make(vals)
            else:
                v, reused = open_node(op)
                _fill(op[4], v, op[3], [single(k) for k in op[5]], reused)
        elif code == OP_NODE:
            v, reused = open_node(op)
            stack.append([op, v, len(op[3]), [], reused])
            continue
        elif code == OP_PYTREE and id(op) in whole:
            v = next_leaf()
            _skip(plan_iter, len(op[2]))
        elif code == OP_CONT or code == OP_PYTREE:
            stack.append([op, None, len(op[2]), [], False])
            continue
        else:
            v = single(op)
        frame[3].append(v)
        frame[2] -= 1


def _fill(impl: NodeImpl, node: tp.Any, keys: tuple, values: list, reused: bool = False) -> None:
    if impl.fill is not None and not reused:
        impl.fill(node, keys, values)
    else:
        set_child = impl.set_child
        for k, child in zip(keys, values):
            set_child(node, k, child)


# -- reading a program with paths -------------------------------------------------
_LEAF_OPS = frozenset({OP_VAR, OP_ARRAY, OP_BOXED})


def _child_keys(op: tuple) -> tuple:
    """The child keys of a node/container/pytree op; () for the others."""
    code = op[0]
    if code == OP_NODE:
        return op[3]
    if code == OP_CONT or code == OP_PYTREE:
        return op[2]
    return ()  # leaves, statics, references, and LEAFNODEs (their children are folded in)


def leaf_ops(graphdef: GraphDef, whole: tp.Container[Path] = ()) -> list[tuple[Path, tuple]]:
    """(path, op) of every leaf of `graphdef`, in its leaf order (iterative).
    A pytree whose path is in `whole` counts as one leaf (its op is listed)."""
    out: list = []
    ops = iter(graphdef.ops)
    stack: list = [iter((None,))]  # one iterator over child keys per open node (and the root's)
    keys: list = []  # the current op's path, after the root's placeholder
    for op in ops:
        keys.append(next(stack[-1]))
        sub = _child_keys(op)
        if op[0] in _LEAF_OPS:
            out.append((tuple(keys[1:]), op))
        elif op[0] == OP_PYTREE and whole and tuple(keys[1:]) in whole:
            out.append((tuple(keys[1:]), op))
            _skip(ops, len(sub))
            sub = ()
        if sub:
            stack.append(iter(sub))
        else:
            _close(stack, keys)
    return out


def _close(stack: list, keys: list) -> None:
    """The op just read has no children to open: drop its key, and close every
    node whose last child that was."""
    keys.pop()
    while stack and stack[-1].__length_hint__() == 0:
        stack.pop()
        if keys:
            keys.pop()


def flatten_like(
    graphdef: GraphDef, node: tp.Any, whole: tp.Container[Path] = ()
) -> list[tuple[Path, Leaf]] | None:
    """The (path, leaf) pairs of `node` at the leaf positions of `graphdef`, in its
    order, whatever their values (None, bools, tracers, sentinels); None if
    `node` does not have that structure. Used to flatten again an object graph
    that JAX unflattened with non-array leaves (e.g. an `eqx.partition` half),
    which `walk` would read as static values. Foreign pytrees at the paths in
    `whole` are returned whole. Iterative over the program, like `leaf_ops`."""
    out: list = []
    ops = iter(graphdef.ops)
    stack: list = [iter(((None, node),))]  # one iterator over (key, child) per open node
    keys: list = []
    try:
        for op in ops:
            k, x = next(stack[-1])
            keys.append(k)
            code = op[0]
            sub = _child_keys(op)
            kids = None
            if code == OP_PYTREE and tuple(keys[1:]) in whole:
                out.append((tuple(keys[1:]), x))
                _skip(ops, len(sub))
                sub = ()
            elif code == OP_VAR:
                if not isinstance(x, op[1]):
                    return None
                out.append((tuple(keys[1:]), x))
            elif code == OP_BOXED:
                out.append((tuple(keys[1:]), x if isinstance(x, VariableLike) else op[1].from_parts(x, ())))
            elif code == OP_ARRAY:
                out.append((tuple(keys[1:]), x.value if type(x) is DataLeaf else x))
            elif code == OP_NODE:
                if type(x) is not op[1]:
                    return None
                kids = dict(op[4].children(x))
            elif code == OP_CONT:
                if type(x) is not op[1] or len(x) != len(sub):
                    return None
                kids = dict(x.items()) if type(x) is dict else dict(enumerate(x))
            elif code == OP_PYTREE:
                found = _pytree_children(x)
                kids = {} if found is None else dict(found[1])
            if sub:
                stack.append(iter([(j, kids[j]) for j in sub]))
            else:
                _close(stack, keys)
    except (LookupError, TypeError):
        return None
    return out


def _skip(ops: tp.Iterator, pending: int) -> None:
    """Consume the ops of `pending` sibling subtrees."""
    while pending:
        pending += len(_child_keys(next(ops))) - 1
