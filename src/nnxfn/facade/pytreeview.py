"""What JAX sees of one Pytree/Module: a `View` (its aux data).

A Module's JAX children are its *data* attributes in sorted name order
(sub-Modules, Variables, arrays, containers holding them); everything else is
static and travels in the View, as in Flax and Equinox. Which attribute is
which is decided by value when the View is made (`nnx.data`/`nnx.static`
marks win): arrays, Variables, graph objects and registered data types are
data, a foreign pytree is data if it holds any, a plain list/dict/tuple is
data if it holds only data (and None), static if it holds none. A plain
container holding both (`[Linear, "relu"]`) is given to JAX as a `Mixed`
node whose children are the data items, so the static items stay static.
`jaxtree.py` keeps Views per object and registers the flatten/unflatten.
"""

from __future__ import annotations

import operator
import types
import typing as tp

import jax
import numpy as np

from nnxfn.core import caches
from nnxfn.core import registry as core_registry
from nnxfn.core.graphdef import same_value
from nnxfn.core.kinds import ARRAY_TYPES
from nnxfn.core.registry import key_order
from nnxfn.core.variable_like import VariableLike
from nnxfn.facade import pytreelib

MEMO = "_nnx_tree"  # where an object keeps its View (see jaxtree.py)
# Bookkeeping entries of an object's __dict__ (never children). The marks of
# which attributes are static/data are carried over to a rebuilt object.
PRIVATE = frozenset(
    (
        "_nnx_frame",
        "_nnx_static",
        "_nnx_pytree",
        "_nnx_data",
        "_nnx_version",
        "_nnx_model",  # an optimizer's link to its model (not owned)
        "_nnx_traced",
        MEMO,
    )
)
_CARRIED = frozenset(("_nnx_static", "_nnx_data"))
_GetAttrKey = jax.tree_util.GetAttrKey
_SequenceKey = jax.tree_util.SequenceKey
_DictKey = jax.tree_util.DictKey
DEFAULT_NEW: list = []  # [Pytree.__new__], set by module.py


# -- kinds of values -------------------------------------------------------------------
VAR, NODE, OPAQUE, ARRAY, STATIC, LIST, TUPLE, OTHER = range(8)
_STATIC_TYPES = (
    type(None),
    int,
    float,
    complex,
    str,
    bytes,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    np.dtype,
    type,
)
KINDS: caches.CacheTable[type, int] = caches.CacheTable(
    "facade.pytreeview.kinds"
)  # cleared when a node type is registered


def kind_of(t: type) -> int:
    """How values of type `t` are treated (cached per type in KINDS)."""
    if issubclass(t, VariableLike):
        k = VAR
    elif core_registry.lookup(t) is not None:  # a pytree=False object is one JAX leaf
        k = NODE if getattr(t, "_nnx_is_pytree", False) else OPAQUE
    elif issubclass(t, (jax.core.Tracer, *ARRAY_TYPES)):
        k = ARRAY
    elif t is list or t is dict:
        k = LIST
    elif t is tuple:
        k = TUPLE
    elif issubclass(t, _STATIC_TYPES):
        k = STATIC
    else:
        k = OTHER  # a foreign pytree or some other object: decided by value
    return KINDS.put(t, k)


def is_object(x: object) -> bool:
    """A facade graph object (an `nnx.Pytree`/`Module` instance): its class
    says how JAX sees it (`_nnx_make_view`, see `object_view`)."""
    return hasattr(type(x), "_nnx_make_view")


def is_graph(x: object) -> bool:
    """A Variable or graph object (has identity)."""
    k = KINDS.get(type(x))
    if k is None:
        k = kind_of(type(x))
    return k <= OPAQUE


_DATA, _STAT, _MIXED = range(3)


def _classify(v: tp.Any) -> int:
    """Whether a value is data (a JAX child), static (aux data) or a container
    holding both (a `Mixed` child)."""
    t = type(v)
    if t in pytreelib.DATA_TYPES:
        return _DATA
    k = KINDS.get(t)
    if k is None:
        k = kind_of(t)
    if k <= ARRAY:
        return _DATA
    if k == STATIC:
        return _STAT
    if k == OTHER:
        return _DATA if pytreelib.has_data(v) else _STAT
    has_data = has_static = False
    for x in v.values() if t is dict else v:
        c = _classify(x)
        if c == _MIXED:
            return _MIXED
        if c == _DATA:
            has_data = True
        elif x is not None:  # None is an empty pytree: it fits in a data container
            has_static = True
    if has_data:
        return _MIXED if has_static else _DATA
    return _STAT


def _has_mutable(v: object) -> bool:
    t = type(v)
    if t is list or t is dict:
        return True
    return t is tuple and isinstance(v, tuple) and any(map(_has_mutable, v))


def _copy_static(v: tp.Any) -> tp.Any:
    """A copy of the lists/dicts of a static value (aux data must not change
    when the object's own list is edited in place)."""
    t = type(v)
    if t is list:
        return [_copy_static(x) for x in v]
    if t is dict:
        return {k: _copy_static(x) for k, x in v.items()}
    if t is tuple and _has_mutable(v):
        return tuple(_copy_static(x) for x in v)
    return v


# -- containers holding data and static values -------------------------------------------
class MixedDef:
    """Aux data of a `Mixed` node: where a container's data and static items are."""

    __slots__ = ("type", "keys", "data", "jkeys", "statics", "nested")

    def __init__(self, container: tp.Any):
        t = self.type = type(container)
        keys = tuple(sorted(container, key=key_order)) if t is dict else tuple(range(len(container)))
        data: list[tp.Any] = []  # keys: any dict key, or an index
        statics: list[tuple[tp.Any, tp.Any]] = []
        nested: list[tuple[int, MixedDef]] = []
        for k in keys:
            x = container[k]
            c = _classify(x)
            if c == _STAT:
                statics.append((k, _copy_static(x)))
                continue
            if c == _MIXED:
                nested.append((len(data), MixedDef(x)))
            data.append(k)
        self.keys = keys
        self.data = tuple(data)
        self.jkeys = tuple(_DictKey(k) if t is dict else _SequenceKey(k) for k in data)
        self.statics = tuple(statics)
        self.nested = tuple(nested)

    def children(self, container: tp.Any) -> list:
        out = [container[k] for k in self.data]
        for i, sub in self.nested:
            out[i] = Mixed(sub, sub.children(out[i]))
        return out

    def build(self, children: tp.Sequence) -> tp.Any:
        if self.type is dict:
            values = {k: _copy_static(x) for k, x in self.statics}
            values.update(zip(self.data, children))
            return {k: values[k] for k in self.keys}
        out: list = [None] * len(self.keys)
        for k, x in self.statics:
            out[k] = _copy_static(x)
        for k, x in zip(self.data, children):
            out[k] = x
        return out if self.type is list else tuple(out)

    def _key(self) -> tuple:
        return (self.type, self.keys, self.data, self.statics, self.nested)

    def __eq__(self, other: object) -> bool:
        return self is other or (type(other) is MixedDef and same_value(self._key(), other._key()))

    def __hash__(self) -> int:
        try:
            return hash(self._key())
        except TypeError:
            return hash((self.type, self.keys, self.data))


class Mixed:
    """A plain list/dict/tuple of data and static values as JAX sees it: the
    data items are its children; `unflatten` gives back the plain container."""

    __slots__ = ("mdef", "children")

    def __init__(self, mdef: MixedDef, children: list):
        self.mdef = mdef
        self.children = children

    def __repr__(self) -> str:
        return f"Mixed({self.mdef.build(self.children)!r})"


jax.tree_util.register_pytree_with_keys(
    Mixed,
    lambda m: (tuple(zip(m.mdef.jkeys, m.children)), m.mdef),
    lambda mdef, children: mdef.build(children),
    lambda m: (m.children, m.mdef),
)


# -- the aux data -------------------------------------------------------------------------
_GETTERS: caches.CacheTable[tuple, tp.Callable] = caches.CacheTable("facade.pytreeview.getters")


def values_getter(keys: tuple) -> tp.Callable[[tp.Any], tuple]:
    """`d -> tuple(d[k] for k in keys)` (an `operator.itemgetter`), made once per key tuple."""
    found = _GETTERS.get(keys)
    if found is None:
        if len(keys) > 1:
            found = operator.itemgetter(*keys)
        elif keys:
            found = _one_getter(keys[0])
        else:
            found = _no_values
        if len(_GETTERS) > 4096:
            _GETTERS.clear()
        _GETTERS.put(keys, found)
    return found


_SETTERS: caches.CacheTable[tuple, tp.Callable[[dict, tp.Iterable], None]] = caches.CacheTable(
    "facade.pytreeview.setters"
)


Setter = tp.Callable[[dict, tp.Iterable], None]


def children_setter(keys: tuple) -> Setter:
    """`(d, children) -> None` writing `d[k] = child` for each key, made once per key tuple."""
    found = _SETTERS.get(keys)
    if found is None:
        if len(_SETTERS) > 4096:
            _SETTERS.clear()
        found = _SETTERS.put(keys, _unpacking_setter(keys))
    return found


def _unpacking_setter(keys: tuple) -> Setter:
    # One unpacking assignment (`d[a], d[b] = children`) is two to three times
    # faster than `d.update(zip(keys, children))`, and JAX's unflatten and
    # `merge` run it once per object: closures for the common sizes (layers
    # rarely hold more than four data attributes), `update` beyond.
    n = len(keys)
    if n == 1:
        (a,) = keys

        def set_one(d: dict, children: tp.Iterable) -> None:
            (d[a],) = children

        return set_one
    if n == 2:
        a, b = keys

        def set_two(d: dict, children: tp.Iterable) -> None:
            d[a], d[b] = children

        return set_two
    if n == 3:
        a, b, c = keys

        def set_three(d: dict, children: tp.Iterable) -> None:
            d[a], d[b], d[c] = children

        return set_three
    if n == 4:
        a, b, c, e = keys

        def set_four(d: dict, children: tp.Iterable) -> None:
            d[a], d[b], d[c], d[e] = children

        return set_four

    def set_many(d: dict, children: tp.Iterable) -> None:
        d.update(zip(keys, children, strict=True))

    return set_many


def _one_getter(key: object) -> tp.Callable[[tp.Any], tuple]:
    def get_one(d: tp.Any) -> tuple:
        return (d[key],)

    return get_one


def _no_values(d: object) -> tuple:
    return ()


class View:
    """Aux data of an object's one-level flatten: its type, its data attribute
    names (the children, sorted) and its static attributes. Compared by value
    and type (a static `2` and `2.0` differ, as in a GraphDef); an object
    keeps its View, so `jax.jit`'s cache check is an identity test."""

    __slots__ = (
        "cls",
        "keys",
        "jkeys",
        "statics",
        "fill_statics",
        "copies",
        "mixed",
        "getter",
        "plain_new",
        "plain_fill",
        "direct",
        "setter",
        "list_names",
        "static_lists",
    )
    _jax_key: tp.ClassVar[tp.Callable] = _GetAttrKey

    def __init__(self, cls: type[object], keys: tuple, statics: tuple, mixed: tuple):
        self.cls = cls
        self.keys = keys
        self.jkeys = tuple(map(self._jax_key, keys))
        self.statics = statics  # ((name, value), ...), sorted
        self.fill_statics = dict(statics)
        self.copies = tuple(k for k, v in statics if _has_mutable(v))
        self.mixed = mixed  # ((index in keys, MixedDef), ...)
        self.getter = values_getter(keys)
        self.setter = children_setter(keys)
        # attributes holding plain lists/dicts, and those of them that are static (set by the maker)
        self.list_names: tuple = ()
        self.static_lists: tuple = ()
        self.plain_new = cls.__new__ is DEFAULT_NEW[0]  # else the class's own `__new__` runs
        self.plain_fill = type(self) is View and not self.copies
        self.direct = type(self) is View and not mixed  # children: `getter(__dict__)`

    def values(self, d: dict) -> tuple:
        """The data attribute values (plain containers as they are)."""
        return self.getter(d)

    def children(self, d: dict) -> tp.Sequence:
        values = self.values(d)
        if not self.mixed:
            return values
        out = list(values)
        for i, mdef in self.mixed:
            out[i] = Mixed(mdef, mdef.children(out[i]))
        return out

    def fill(self, d: dict, children: tp.Iterable) -> None:
        d.update(self.fill_statics)
        for k in self.copies:
            d[k] = _copy_static(d[k])
        self.setter(d, children)

    def _key(self) -> tuple:
        return (self.keys, self.statics, self.mixed)

    def __eq__(self, other: object) -> bool:
        return self is other or (
            isinstance(other, View)
            and type(other) is type(self)
            and self.cls is other.cls
            and same_value(self._key(), other._key())
        )

    def __hash__(self) -> int:
        try:
            return hash((self.cls, self._key()))
        except TypeError:  # an unhashable static value
            return hash((self.cls, self.keys))

    def __repr__(self) -> str:
        return f"View({self.cls.__name__}, data={list(self.keys)}, static={[k for k, _ in self.statics]})"


def object_view(obj: object) -> View:
    """The View of a Pytree/Module from its current attribute values."""
    d = obj.__dict__
    marked_static = d.get("_nnx_static") or ()
    marked_data = d.get("_nnx_data") or ()
    keys: list = []
    statics: list = []
    mixed: list = []
    for name in sorted(d):
        v = d[name]
        if name in PRIVATE:
            if name in _CARRIED:
                statics.append((name, v))
            continue
        if name in marked_static:
            c = _STAT
        elif name in marked_data:
            c = _DATA
        else:
            c = _classify(v)
        if c == _STAT:
            statics.append((name, _copy_static(v)))
            continue
        if c == _MIXED:
            mixed.append((len(keys), MixedDef(v)))
        keys.append(name)
    view = View(type(obj), tuple(keys), tuple(statics), tuple(mixed))
    view.list_names = tuple(k for k in sorted(d) if k not in PRIVATE and _has_mutable(d[k]))
    view.static_lists = tuple(k for k in view.list_names if k not in keys)
    return view


class ListView(View):
    """The View of an `nnx.List`: its data items (by index) are the children."""

    __slots__ = ("n", "flags")
    _jax_key = _SequenceKey

    def __init__(
        self,
        cls: type[object],
        keys: tuple,
        statics: tuple,
        mixed: tuple,
        n: int,
        flags: tuple[bool, ...] | None,
    ):
        super().__init__(cls, keys, statics, mixed)
        self.n = n
        self.flags = flags  # the "marked data" flags (a tuple), or None

    def values(self, d: dict) -> tuple:
        return self.getter(d["_items"])

    def fill(self, d: dict, children: tp.Iterable) -> None:
        items: list = [None] * self.n
        for i, v in self.statics:
            items[i] = _copy_static(v)
        for i, v in zip(self.keys, children):
            items[i] = v
        d["_items"] = items
        if self.flags is not None:
            d["_isdata"] = list(self.flags)

    def _key(self) -> tuple:
        return (self.n, self.keys, self.statics, self.mixed, self.flags)


def list_view(obj: object) -> ListView:
    """The View of an `nnx.List` from its current items."""
    items = obj.__dict__["_items"]
    flags = obj.__dict__.get("_isdata")
    keys: list = []
    statics: list = []
    mixed: list = []
    for i, v in enumerate(items):
        c = _DATA if flags is not None and i < len(flags) and flags[i] else _classify(v)
        if c == _STAT:
            statics.append((i, _copy_static(v)))
            continue
        if c == _MIXED:
            mixed.append((len(keys), MixedDef(v)))
        keys.append(i)
    frozen = None if flags is None else tuple(flags[: len(items)]) + (False,) * (len(items) - len(flags))
    view = ListView(type(obj), tuple(keys), tuple(statics), tuple(mixed), len(items), frozen)
    if any(map(_has_mutable, items)):
        view.list_names = ("_items",)
    if any(_has_mutable(v) for _, v in statics):
        view.static_lists = ("_items",)
    return view
