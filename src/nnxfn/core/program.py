"""Running a GraphDef's program: `_unflatten_ops` (the one unflatten: `merge`,
`unflatten` and the transforms' commits), `leaf_ops` and `flatten_like`
(reading a program with paths). `walker.py` writes programs.
"""

from __future__ import annotations

import operator
import typing as tp
from itertools import islice


from nnxfn.core.graphdef import (
    OP_ALIAS,
    OP_AREF,
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
from nnxfn.core.kinds import _pytree_children, children_of
from nnxfn.core.links import apply_links
from nnxfn.core.registry import NodeImpl
from nnxfn.core.splitcache import same_snapshot, snapshot
from nnxfn.core.variable_like import DataLeaf, VariableLike

Path = tuple[tp.Any, ...]
Leaf = tp.Any


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
    return _unflatten_ops(graphdef, leaves, copy=copy, trusted=False, objects=objects)


OP_LEAFNODE = -1  # graph nodes whose children are all single ops (see `_plan`)
_SINGLE = frozenset({OP_VAR, OP_ARRAY, OP_BOXED, OP_STATIC, OP_REF, OP_AREF, OP_ALIAS})


def _plan(ops: list) -> list:
    """`ops` with every graph node whose children are all single ops (Variables,
    arrays, statics, back-references: most layers) folded into one
    `(OP_LEAFNODE, type, static, keys, impl, child ops, picker, make, count)`:
    `count` equal such nodes in a row among the children of one parent (the
    layers of a list) built by one `make` call (`NodeImpl.builder`), without
    a frame of their own."""
    out: list = []
    i, n = 0, len(ops)
    index = 0  # GraphDef index of the next Variable or graph node
    left = [1]  # children still to come in each open node/container (the root's slot first)
    frames = [0]  # a number per open frame: a run never crosses into another parent
    opened = 0
    run_in = None  # the frame holding `out[-1]` if that is a LEAFNODE
    while i < n:
        op = ops[i]
        i += 1
        code = op[0]
        frame = frames[-1]
        left[-1] -= 1
        sub = 0  # children of `op` that follow it
        if code == OP_NODE:
            count = len(op[3])
            kids = tuple(ops[i : i + count])
            if (
                len(kids) == count
                and all(k[0] in _SINGLE for k in kids)
                and (OP_REF, index) not in kids  # it holds itself: made before its children
            ):
                i += count
                index += 1 + sum(k[0] == OP_VAR for k in kids)
                last = out[-1] if run_in == frame else None
                if (
                    last is not None
                    and last[1:6] == (*op[1:], kids)
                    and not any(k[0] == OP_REF for k in kids)  # the same objects each time
                ):
                    out[-1] = (*last[:8], last[8] + 1)
                else:
                    impl = op[4]
                    make = impl.builder(op[1], op[2], op[3]) if impl.builder is not None else None
                    out.append((OP_LEAFNODE, *op[1:], kids, _picker(kids), make, 1))
                run_in = frame
                _close_done(left, frames)
                continue
            sub = count
        elif code == OP_CONT or code == OP_PYTREE:
            sub = len(op[2])
        if code == OP_VAR or code == OP_NODE:
            index += 1
        out.append(op)
        run_in = None
        if sub:
            opened += 1
            left.append(sub)
            frames.append(opened)
        else:
            _close_done(left, frames)
    return out


def _close_done(left: list, frames: list) -> None:
    """Drop the open frames whose last child was just read."""
    while left and not left[-1]:
        left.pop()
        frames.pop()


def _picker(kids: tuple) -> tuple[int, tuple, tp.Callable] | None:
    """For children that are only Variables (at least one) and statics:
    (number of Variables, the static values, a getter that orders
    `variables + statics` by key), so a trusted merge fills the nodes with
    C-level calls; else None."""
    if not all(k[0] == OP_VAR or k[0] == OP_STATIC for k in kids):
        return None
    nvars = sum(k[0] == OP_VAR for k in kids)
    if not nvars:
        return None
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
        return nvars, statics, tuple
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
    built: list | None = None,
    current: tp.Any = None,
) -> tp.Any:
    """Run the program of `graphdef` with `leaves` in its leaf order: the one
    unflatten (`merge`, `unflatten` and the transforms all come here).

    `trusted`: the leaves come from the `split` that made `graphdef`
    (Variables where it has them), so nothing is checked; else a leaf that
    does not fit raises `LeafMismatch`. `reuse` maps GraphDef
    indices to existing objects updated in place instead of made (how
    transforms commit onto the caller's objects); a list, dict, tuple or
    foreign pytree that a reused node (or `current`, the existing root) holds
    is kept if its children come out the same objects; with `current` (how
    `update` writes) a changed list or dict is edited in place. `whole`: ids of pytree ops
    given as one leaf (see `walk(whole_pytrees=...)`). `objects` receives the
    objects by GraphDef index. `adopt`: Variables used as they are (not
    copied) are told they join a graph `merge` builds (`VariableLike.adopt`).
    `built` receives every list, dict and foreign pytree made."""
    plan = graphdef._plan
    if plan is None:
        plan = graphdef._plan = _plan(graphdef.ops)
    plan_iter = iter(plan)
    next_op = plan_iter.__next__
    leaf_iter = iter(leaves)
    next_leaf = leaf_iter.__next__
    shared = trusted and not copy and not reuse  # the State's own Variables go into the new graph
    if objects is None:
        objects = []  # graph objects and Variables made, by GraphDef index
    add_object = objects.append
    refs: list = []  # the bare jax.Refs, in pre-order (OP_ALIAS refers to them)

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
                raise LeafMismatch
            value, meta = (leaf.raw_value, leaf.metadata_items()) if boxed else (leaf, op[2])
            v = reuse.get(len(objects)) if reuse else None
            if v is not None:  # commit in place
                if leaf is not v:
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
        if code == OP_ARRAY:
            v = next_leaf()
            if not trusted and isinstance(v, VariableLike):
                v = v.raw_value
            return v
        if code == OP_BOXED:  # boxed only in the State: the graph holds the raw value
            v = next_leaf()
            return v.raw_value if isinstance(v, VariableLike) else v
        if code == OP_STATIC:
            return op[1]
        if code == OP_AREF:
            v = next_leaf()
            if not trusted and isinstance(v, VariableLike):
                v = v.raw_value
            refs.append(v)
            return v
        if code == OP_ALIAS:
            return refs[op[1]]
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

    def leaf_nodes(op: tuple) -> list:
        """The `count` nodes of a LEAFNODE op, in order."""
        count, make = op[8], op[7]
        if make is None or reuse:
            out = []
            for _ in range(count):
                v, reused = open_node(op)
                _fill(op[4], v, op[3], [single(k) for k in op[5]], reused)
                out.append(v)
            return out
        picker = op[6]
        start = len(objects)
        if shared and picker is not None:  # the State's Variables, as they come
            nvars, statics, order = picker
            new = list(islice(leaf_iter, nvars * count))
            block: list = [None] * ((nvars + 1) * count)  # each node's index, then its Variables'
            for j in range(nvars):
                block[1 + j :: nvars + 1] = new[j::nvars]
            objects.extend(block)
            groups: tp.Iterable = zip(*[iter(new)] * nvars)
            if statics:
                groups = [order(g + statics) for g in groups]
            made = make(groups)
            objects[start :: nvars + 1] = made
            return made
        at = []
        values = []
        for _ in range(count):
            at.append(len(objects))
            add_object(None)  # its index comes before its Variables'
            values.append([single(k) for k in op[5]])
        made = make(values)
        for i, v in zip(at, made):
            objects[i] = v
        return made

    def existing(frame: list) -> tp.Any:
        """What the object of `frame` holds now at the key of its next child
        (None if it is new): a container there may be kept."""
        kids = frame[5]
        if kids is None:
            if not frame[4]:
                return None
            kids = frame[5] = dict(frame[0][4].children(frame[1]))  # a reused node
        return kids.get(_child_keys(frame[0])[len(frame[3])]) if frame[0] else kids.get(0)

    top: list = []
    # One frame per open node/container: [op, object (a container: the one it
    # may keep), children still to read, children, reused, the kept object's children].
    stack: list = [[None, None, 1, top, False, None if current is None else {0: current}]]
    while True:
        frame = stack[-1]
        if not frame[2]:  # all children read: finish the node/container
            stack.pop()
            op, v, _, vals, reused, _ = frame
            if op is None:
                if graphdef.links:
                    apply_links(graphdef.links, objects)
                return top[0]
            if op[0] == OP_NODE:
                _fill(op[4], v, op[3], vals, reused)
            else:
                old = v
                if op[0] == OP_PYTREE:
                    v = op[1].unflatten(vals)
                elif op[1] is dict:
                    v = dict(zip(op[2], vals))
                else:
                    v = vals if op[1] is list else op[1](vals)
                if old is not None and _same(old, v):
                    v = old  # nothing in it changed: the caller's object stays
                elif current is not None and type(old) is type(v) and (type(v) is list or type(v) is dict):
                    v = _edit(old, v)
                elif built is not None and type(v) is not tuple:
                    built.append(v)
            parent = stack[-1]
            parent[3].append(v)
            parent[2] -= 1
            continue
        op = next_op()
        code = op[0]
        if code == OP_LEAFNODE:
            made = leaf_nodes(op)
            frame[3].extend(made)
            frame[2] -= len(made)
            continue
        elif code == OP_NODE:
            v, reused = open_node(op)
            stack.append([op, v, len(op[3]), [], reused, None])
            continue
        elif code == OP_PYTREE and id(op) in whole:
            v = next_leaf()
            _skip(plan_iter, len(op[2]))
        elif code == OP_CONT or code == OP_PYTREE:
            old = existing(frame) if (reuse or current is not None) else None
            stack.append([op, old, len(op[2]), [], False, None if old is None else dict(children_of(old))])
            continue
        else:
            v = single(op)
        frame[3].append(v)
        frame[2] -= 1


def _same(old: tp.Any, new: tp.Any) -> bool:
    """`new` has the type, keys and very child objects of `old`."""
    return type(old) is type(new) and same_snapshot(snapshot(old), snapshot(new))


def _edit(old: tp.Any, new: tp.Any) -> tp.Any:
    """`old` (a list or dict) edited in place to hold what `new` holds."""
    if type(old) is list:
        old[:] = new
    else:
        old.clear()
        old.update(new)
    return old


def _fill(impl: NodeImpl, node: tp.Any, keys: tuple, values: list, reused: bool = False) -> None:
    if impl.fill is not None and not reused:
        impl.fill(node, keys, values)
    else:
        set_child = impl.set_child
        for k, child in zip(keys, values):
            set_child(node, k, child)


# -- reading a program with paths -------------------------------------------------
_LEAF_OPS = frozenset({OP_VAR, OP_ARRAY, OP_BOXED, OP_AREF})


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
            elif code == OP_ARRAY or code == OP_AREF:
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
