"""Modules as JAX pytrees: one level per object, as Flax and Equinox.

JAX flattens a Module into its data attributes and recurses (see
`pytreeview.py` for what is data), so sub-Modules are pytree nodes (`is_leaf`
sees them, `eqx.tree_at` can replace them), key paths read
`.blocks[3].lin.kernel.value`, and `unflatten` accepts any leaves (tracers,
None, batched arrays, `ShapeDtypeStruct`s).

Sharing. A pytree has no identity: flattened one level at a time, a
sub-Module reached by two paths would become two copies, a shared Variable
two leaves whose gradients are split, and a cycle would never end. So an
object whose subtree reaches some Module or Variable twice (shared, or a
cycle) is flattened *whole* instead (`whole.py`): its leaves are its
deduplicated State leaves and `unflatten` rebuilds the sharing. The rules,
and what each costs:

- Every object keeps a memo in `__dict__` (`_nnx_tree`): its View and
  whether its subtree shares. Both hold while the process-wide structure
  epoch has not moved (any attribute set or delete anywhere moves it) and
  the plain lists/dicts of the subtree hold the same items (compared by
  identity on each flatten). Then a flatten is a dict read, two compares and
  one tuple build.
- Otherwise the flatten walks the subtree once (O(objects below)) and stamps
  every object in it, so the children JAX flattens next find valid stamps.
- An object `unflatten` built needs no walk: its first flatten claims its
  children instead (O(children), objects built by the same unflatten first).
  An object whose graph children are all built by a JAX unflatten and not
  yet claimed by another parent (a claim is made once) cannot share. So the
  model returned by `jax.jit(step)(model)` or `jax.tree.map` flattens
  without a walk, and a roundtrip that is not flattened again pays nothing.
  A child that was not built fresh (an object put in by `eqx.tree_at`, a
  Variable given as a leaf) leaves its parent unknown: the flatten walks.
- A walk also looks inside plain lists/dicts and foreign pytrees (Equinox
  modules); a foreign pytree that can change in place (not a tuple or frozen
  dataclass) is never trusted: the objects holding one walk on every flatten.
- The memos only save work: with caching off (`NNXFN_CACHE=0`, see
  `core/caches.py`) none is trusted and every flatten walks.
"""

from __future__ import annotations

import typing as tp

import jax
from jax._src import core as _jax_core
from jax._src.core import EvalTrace as _EvalTrace

from nnxfn.core import caches
from nnxfn.core.caches import STRUCTURE as _EPOCH
from nnxfn.core.splitcache import same_snapshot, snapshot
from nnxfn.core.walker import mutable as _mutable
from nnxfn.facade import context
from nnxfn.facade.whole import flatten_whole, flatten_whole_with_keys, unflatten_whole
from nnxfn.facade.pytreeview import (
    ARRAY,
    DEFAULT_NEW,
    KINDS,
    LIST,
    MEMO,
    NODE,
    OPAQUE,
    OTHER,
    STATIC,
    TUPLE,
    VAR,
    View,
    is_graph,
    kind_of,
)

_LOCAL = context.LOCAL
_FOREIGN = context.FOREIGN
_TRACE_REF = _jax_core.trace_state_strong_ref  # `.value`: the current JAX trace
_object_new = object.__new__
_NONE: tuple = ()
_CACHING = caches.SWITCH  # `.on`: with caching off no memo is trusted, every flatten walks

# -- the memo ------------------------------------------------------------------------------
# An object's memo is a list [EPOCH, VIEW, VERSION, OWN, SHARED, SNAPS, FRESH]:
# EPOCH: the structure epoch when SHARED was found (-1: unknown, walk again).
# VIEW/VERSION/OWN: the View, valid while the object's structure version is
#   VERSION and the plain lists/dicts of its own attributes (OWN, as
#   (container, snapshot) pairs) hold the same items.
# SHARED: whether the subtree reaches an object twice; SNAPS: the lists/dicts
#   of the whole subtree. FRESH: built by `unflatten`, not yet claimed.
# An object `unflatten` built is PENDING (fresh, its children not claimed
# yet: the first flatten that needs the answer claims them, `_verify`). Its
# memo is then its bare View (no list to make), or a list with SHARED ==
# PENDING if it holds plain lists/dicts (OWN: their snapshots). A structural
# change of the object drops its memo (`context.bump_structure`).
EPOCH, VIEW, VERSION, OWN, SHARED, SNAPS, FRESH = range(7)
PENDING = "pending"


def _same(snaps: tuple) -> bool:
    for container, snap in snaps:
        if not same_snapshot(snapshot(container), snap):
            return False
    return True


def _is_pending(m: object) -> bool:
    return m is not None and (type(m) is not list or m[SHARED] is PENDING)


def memo_of(obj: object) -> list:
    """The object's valid memo: its stamp if still valid, else its claims
    settled (if `unflatten` built it), else a walk of its subtree."""
    if not _CACHING.on:
        return _walk(obj)
    d = obj.__dict__
    m = d.get(MEMO)
    if _is_pending(m):
        _verify(obj)
        m = d[MEMO]
        if m[SHARED] is False:
            return m
    elif (
        m is not None
        and m[EPOCH] == _EPOCH.now
        and m[SHARED] is not None
        and (not m[SNAPS] or _same(m[SNAPS]))
    ):
        return m
    return _walk(obj)


def _view_of(node: tp.Any) -> tuple[View, int]:
    d = node.__dict__
    version = d.get("_nnx_version", 0)
    m = d.get(MEMO)
    if m is not None and _CACHING.on:
        if type(m) is not list:  # a bare View: nothing changed since `unflatten` made it
            return m, version
        if m[VERSION] == version and (not m[OWN] or _same(m[OWN])):
            return m[VIEW], version
    return type(node)._nnx_make_view(node), version


class _Frame:
    """An object being walked: its View and the values still to visit."""

    __slots__ = ("node", "view", "version", "todo", "start", "own", "volatile")

    def __init__(self, node: object, snaps: list):
        d = node.__dict__
        self.node = node
        self.view, self.version = _view_of(node)
        self.todo = list(self.view.values(d))
        self.start = len(snaps)
        # static lists/dicts: their items are the View's (copied) static values
        self.own: list = list(_snapshots(d[k] for k in self.view.static_lists))
        snaps.extend(self.own)
        self.volatile = False


def _walk(root: object) -> list:
    """Find whether `root`'s subtree reaches a Module or Variable twice; stamp
    every object whose whole subtree was seen without that (see the docstring)."""
    epoch = _EPOCH.now
    seen = {id(root)}
    alive: list = []  # values met inside foreign pytrees: their ids must stay unique
    snaps: list = []
    stack = [_Frame(root, snaps)]
    shared = False
    while stack and not shared:
        f = stack[-1]
        todo = f.todo
        pushed = False
        while todo:
            x = todo.pop()
            t = type(x)
            k = KINDS.get(t)
            if k is None:
                k = kind_of(t)
            if k <= OPAQUE:
                if id(x) in seen:
                    shared = True
                    break
                seen.add(id(x))
                if k == NODE:
                    stack.append(_Frame(x, snaps))
                    pushed = True
                    break
            elif k == LIST or k == TUPLE:
                if t is not tuple:
                    pair = (x, snapshot(x))
                    snaps.append(pair)
                    f.own.append(pair)
                todo.extend(x.values() if t is dict else x)
            elif k == OTHER:
                leaves = jax.tree.leaves(x, is_leaf=is_graph)
                if len(leaves) == 1 and leaves[0] is x:
                    continue  # not a pytree
                alive.append(leaves)
                if _mutable(x):  # may change in place unseen: never trusted
                    f.volatile = True
                todo.extend(y for y in leaves if is_graph(y))
        if shared or pushed:
            continue
        stack.pop()
        if f.volatile:
            m = [-1, f.view, f.version, tuple(f.own), None, _NONE, False]
            if stack:
                stack[-1].volatile = True
        else:
            m = [epoch, f.view, f.version, tuple(f.own), False, tuple(snaps[f.start :]), False]
        f.node.__dict__[MEMO] = m
        if not stack:
            return m
    # `root` reaches something twice: it is flattened whole.
    view, version = _view_of(root)
    volatile = any(f.volatile for f in stack)
    m = [-1 if volatile else epoch, view, version, tuple(stack[0].own), True, tuple(snaps), False]
    root.__dict__[MEMO] = m
    return m


# -- unflatten: fresh objects and their claims ------------------------------------------------
_get_fresh: tp.Callable[[tp.Any], bool] = lambda v: False  # noqa: E731 - set by variables.py
_set_fresh: tp.Callable[[tp.Any, bool], None] = lambda v, f: None  # noqa: E731


def set_fresh_slot(getter: tp.Callable, setter: tp.Callable) -> None:
    """Called by `variables.py`: how to read and write a Variable's "fresh" mark."""
    global _get_fresh, _set_fresh
    _get_fresh, _set_fresh = getter, setter


def _claim(x: tp.Any, epoch: int, snaps: list) -> bool:
    """Claim `x` (a child of an object `unflatten` built) for its parent: True
    if `x` and everything below it is known not to share with anything else
    (`snaps` gets the list snapshots its subtree's answer depends on)."""
    t = type(x)
    k = KINDS.get(t)
    if k is None:
        k = kind_of(t)
    if k == ARRAY or k == STATIC:
        return True
    if k == VAR:
        try:
            if not _get_fresh(x):
                return False
        except AttributeError:  # never marked: not built by an unflatten
            return False
        _set_fresh(x, False)
        return True
    if k == NODE:  # settled first (see `_verify`)
        m = x.__dict__.get(MEMO)
        if type(m) is not list or not m[FRESH] or m[EPOCH] != epoch or m[SHARED] is not False:
            return False
        m[FRESH] = False
        snaps.extend(m[SNAPS])
        return True
    if k == LIST or k == TUPLE:
        if t is not tuple:  # (also snapshotted when the parent was built, see `unflatten`)
            snaps.append((x, snapshot(x)))
        ok = True
        for y in x.values() if t is dict else x:
            ok = _claim(y, epoch, snaps) and ok
        return ok
    if k == OTHER:
        leaves = jax.tree.leaves(x, is_leaf=is_graph)
        if len(leaves) == 1 and leaves[0] is x:
            return True  # not a pytree
        ok = not _mutable(x)
        for y in leaves:
            if is_graph(y):
                ok = _claim(y, epoch, snaps) and ok
        return ok
    return False  # a pytree=False object given as a leaf


def _graph_children(children: tp.Iterable) -> list:
    """The graph objects among `children`, also inside plain containers and foreign pytrees."""
    out: list = []
    todo = list(children)
    while todo:
        x = todo.pop()
        t = type(x)
        k = KINDS.get(t)
        if k is None:
            k = kind_of(t)
        if k == NODE:
            out.append(x)
        elif k == LIST or k == TUPLE:
            todo.extend(x.values() if t is dict else x)
        elif k == OTHER:
            todo.extend(y for y in jax.tree.leaves(x, is_leaf=is_graph) if y is not x and is_graph(y))
    return out


def _verify(root: object) -> None:
    """Settle a PENDING object: claim its children, after settling the PENDING
    objects below it (iteratively, children first)."""
    order: list = []
    seen: set = set()
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        order.append(obj)
        m = obj.__dict__[MEMO]
        view = m if type(m) is not list else m[VIEW]
        stack.extend(
            x for x in _graph_children(view.values(obj.__dict__)) if _is_pending(x.__dict__.get(MEMO))
        )
    epoch = _EPOCH.now
    for obj in reversed(order):
        d = obj.__dict__
        m = d[MEMO]
        if not _is_pending(m):
            continue
        view, own = (m, _NONE) if type(m) is not list else (m[VIEW], m[OWN])
        snaps: list = list(own)  # its lists as they were when it was built
        ok = not own or _same(own)
        if ok:
            for c in view.values(d):
                ok = _claim(c, epoch, snaps) and ok
        version = d.get("_nnx_version", 0)
        if ok:
            d[MEMO] = [epoch, view, version, own, False, tuple(snaps), True]
        else:
            d[MEMO] = [-1, view, version, own, None, _NONE, False]


def unflatten_object(view: View | tuple, children: tp.Iterable) -> tp.Any:
    """Build an object from a View and any children, without `__init__`."""
    if type(view) is tuple:  # flattened whole
        return unflatten_whole(view, children)
    assert isinstance(view, View)
    children = tuple(children)  # JAX passes a tuple: no copy
    cls = view.cls
    obj = _object_new(cls) if view.plain_new else cls.__new__(cls)
    d = obj.__dict__
    if view.plain_fill:
        d.update(view.fill_statics)
        view.setter(d, children)
    else:
        view.fill(d, children)
    frames = _LOCAL.frames
    if frames:
        d["_nnx_frame"] = frames[-1]
    if type(_TRACE_REF.value) is not _EvalTrace:
        d["_nnx_traced"] = True
        if not frames:  # rebuilt by a JAX transform: writes to it would be lost
            d["_nnx_frame"] = _FOREIGN
            context.remember_foreign_path(obj, ())  # the root, until a parent claims it
            _remember_paths(obj, view, children)
    if view.list_names:
        d[MEMO] = [-1, view, 0, _snapshots([d[k] for k in view.list_names]), PENDING, _NONE, True]
    else:
        d[MEMO] = view  # PENDING (see the memo above): nothing to allocate
    return obj


def _snapshots(values: tp.Iterable) -> tuple:
    """(container, snapshot) of the plain lists/dicts in `values` (nested too)."""
    out: list = []
    todo = list(values)
    while todo:
        x = todo.pop()
        t = type(x)
        if t is list or t is dict:
            out.append((x, snapshot(x)))
            todo.extend(x.values() if t is dict else x)
        elif t is tuple:
            todo.extend(x)
    return tuple(out)


def _remember_paths(obj: object, view: View, children: tp.Sequence) -> None:
    """Link the rebuilt children to `obj` so a warning can name their path."""
    stack: list[tuple[tuple, tp.Any]] = [((k,), c) for k, c in zip(view.keys, children)]
    while stack:
        path, x = stack.pop()
        t = type(x)
        if is_graph(x):
            context.remember_foreign_parent(x, obj, path)
        elif t is list or t is tuple:
            stack.extend((path + (i,), y) for i, y in enumerate(x))
        elif t is dict:
            stack.extend((path + (k,), y) for k, y in x.items())


# -- flatten -------------------------------------------------------------------------------------
def flatten_object(obj: object) -> tuple[tp.Sequence, tp.Any]:
    d = obj.__dict__
    m = d.get(MEMO)
    if (
        type(m) is not list
        or not _CACHING.on
        or m[SHARED] is not False
        or m[EPOCH] != _EPOCH.now
        or (m[SNAPS] and not _same(m[SNAPS]))
    ):
        m = memo_of(obj)
    if m[SHARED]:
        return flatten_whole(obj)
    view = m[VIEW]
    return (view.getter(d) if view.direct else view.children(d)), view


def flatten_object_with_keys(obj: object) -> tuple[tp.Sequence, tp.Any]:
    m = memo_of(obj)
    if m[SHARED]:
        return flatten_whole_with_keys(obj)
    view = m[VIEW]
    return tuple(zip(view.jkeys, view.children(obj.__dict__))), view


def register(cls: type) -> None:
    """Make `cls` (a Pytree subclass) a JAX pytree node."""
    jax.tree_util.register_pytree_with_keys(cls, flatten_object_with_keys, unflatten_object, flatten_object)


__all__ = ["DEFAULT_NEW", "register", "flatten_object", "unflatten_object", "memo_of"]
