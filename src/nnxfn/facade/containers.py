"""`nnx.List`, `nnx.Dict` and `nnx.Sequential`.

Plain Python lists and dicts work as attributes too; these containers add
identity (they can be shared like Modules) and record structural changes.
"""

from __future__ import annotations

import typing as tp
from collections.abc import MutableMapping, MutableSequence

from nnxfn import core
from nnxfn.facade import context, pytreeview
from nnxfn.core import DataLeaf
from nnxfn.facade import pytreelib
from nnxfn.facade.module import Module, Object, needs_box


class List(Object, MutableSequence):
    """A list that is a graph node: `self.layers = nnx.List([...])`.

    Items are data or static by value, as attributes are; `nnx.data(v)` /
    `nnx.static(v)` items override that (`nnx.List([nnx.data(1)])` holds the
    leaf 1). A plain value written to a data index keeps it data.
    """

    _nnx_make_view = staticmethod(pytreeview.list_view)  # JAX sees the data items
    _items: list[tp.Any]  # the items (set with object.__setattr__: not structure writes)

    def __init__(self, items: tp.Iterable = ()):
        object.__setattr__(self, "_items", [])
        for value in items:
            value, is_data = self._unmark(len(self._items), value)
            flags = self._flags(is_data)
            if flags is not None:
                flags.append(is_data)
            self._items.append(value)

    def _write(self) -> None:
        context.check_write(self, self.__dict__.get("_nnx_frame"), "an item")
        context.bump_structure(self)

    def _unmark(self, index: object, value: object) -> tuple[tp.Any, bool]:
        """(value to store, whether `nnx.data` marked it) for an item."""
        if type(value) is not pytreelib.Marked:
            return value, False
        if not value.is_data:
            pytreelib.check_static(self, f"[{index}]", value.value, explicit=True)
        return value.value, value.is_data

    def _flags(self, needed: bool) -> list[bool] | None:
        """The per-item "marked data" flags, made when first `needed`."""
        flags = _synced_flags(self)
        if flags is None and needed:
            flags = [False] * len(self._items)
            object.__setattr__(self, "_isdata", flags)
        return flags

    def __getitem__(self, i: tp.Any) -> tp.Any:
        return self._items[i]

    def __setitem__(self, i: tp.Any, value: tp.Any) -> None:
        if isinstance(i, slice):
            pairs = [self._unmark(i, v) for v in value]
            marks = [m for _, m in pairs]
            self._write()
            flags = self._flags(any(marks))
            self._items[i] = [v for v, _ in pairs]
            if flags is not None:
                flags[i] = marks
            return
        value, is_data = self._unmark(i, value)
        self._write()
        self._items[i] = value
        flags = self._flags(is_data)
        if is_data and flags is not None:
            flags[i] = True

    def __delitem__(self, i: tp.Any) -> None:
        self._write()
        flags = _synced_flags(self)
        del self._items[i]
        if flags is not None:
            del flags[i]

    def __len__(self) -> int:
        return len(self._items)

    def insert(self, i: int, value: object) -> None:
        value, is_data = self._unmark(i, value)
        self._write()
        flags = self._flags(is_data)
        if flags is not None:
            flags.insert(i, is_data)
        self._items.insert(i, value)

    # Flax's List is a Module: these Module methods work on it too (they walk the graph).
    # (`sow`/`perturb` do not: a List holds items, not attributes.)
    iter_modules = Module.iter_modules
    set_attributes = Module.set_attributes
    train = Module.train
    eval = Module.eval

    def iter_children(self) -> tp.Iterator[tuple[int, Module]]:
        """(index, item) for the items that are Modules."""
        for i, value in enumerate(self._items):
            if isinstance(value, Module):
                yield i, value

    def __getstate__(self) -> dict:
        state = {"_items": self._items}
        flags = _synced_flags(self)
        if flags is not None:
            state["_isdata"] = flags
        return state


def _synced_flags(lst: List) -> list[bool] | None:
    """The "marked data" flags, one per item (items added by a merge's fast
    fill are unmarked), or None if no item was ever marked."""
    flags = lst.__dict__.get("_isdata")
    if flags is not None and len(flags) != len(lst._items):
        del flags[len(lst._items) :]
        flags.extend([False] * (len(lst._items) - len(flags)))
    return flags


def _list_children(lst: List) -> list[tuple[int, tp.Any]]:
    flags = _synced_flags(lst)
    if flags is None:
        return list(enumerate(lst._items))
    return [(i, DataLeaf(v) if f and needs_box(v) else v) for i, (v, f) in enumerate(zip(lst._items, flags))]


def _list_static(lst: List) -> tp.Hashable:
    """The indices of `nnx.data`-marked items (kept in the GraphDef), or None."""
    flags = _synced_flags(lst)
    if not flags or not any(flags):
        return None
    return tuple(i for i, f in enumerate(flags) if f)


def _list_create(cls: type[List], static: tp.Any) -> List:
    lst = cls.__new__(cls)
    object.__setattr__(lst, "_items", [])
    if static:
        flags = [False] * (max(static) + 1)
        for i in static:
            flags[i] = True
        object.__setattr__(lst, "_isdata", flags)
    return lst


def _list_set(lst: List, i: int, value: object) -> None:
    if i == len(lst._items):
        lst._items.append(value)
    else:
        if lst._items[i] is not value:  # a rebound item (see module._set_child)
            context.bump_structure(lst)
        lst._items[i] = value


def _list_del(lst: List, i: int) -> None:
    context.bump_structure(lst)
    flags = _synced_flags(lst)
    del lst._items[i]
    if flags is not None:
        del flags[i]


def _list_fill(lst: List, keys: tuple, values: tp.Sequence) -> None:
    lst._items.extend(values)  # a list `_list_create` just made: keys are 0, 1, ...


core.register_node_type(
    core.NodeImpl(
        List, _list_children, _list_create, _list_set, _list_del, static=_list_static, fill=_list_fill
    )
)


class Dict(Module, MutableMapping):
    """A dict of sub-modules/arrays that is a Module: `d['enc']` or `d.enc`."""

    def __init__(self, *args: object, **kwargs: object):
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def __getitem__(self, key: str) -> tp.Any:
        try:
            return self.__dict__[key]
        except KeyError:
            raise KeyError(key) from None

    def __setitem__(self, key: str, value: object) -> None:
        setattr(self, key, value)

    def __delitem__(self, key: str) -> None:
        delattr(self, key)

    def __iter__(self) -> tp.Iterator[str]:
        return (k for k in self.__dict__ if not k.startswith("_nnx_"))

    def __len__(self) -> int:
        return sum(1 for _ in self)


class Sequential(Module):
    """Applies its layers in order: `nnx.Sequential(nnx.Linear(...), nnx.relu, ...)`."""

    def __init__(self, *layers: tp.Callable):
        self.layers = List(layers)

    def __call__(self, *args: object, rngs: object = None, **kwargs: object) -> tp.Any:
        """Chain the layers (as Flax does): a tuple output is the next layer's
        positional arguments, a dict output its keywords; `rngs` goes to every
        layer that takes it. With no layers, the input comes back unchanged."""
        if not self.layers:
            if len(args) == 1:
                return args[0]
            return args if args else (kwargs or None)
        out: tp.Any = None
        for i, layer in enumerate(self.layers):
            if not callable(layer):
                raise TypeError(f"Sequential: layer {i} is not callable (got {type(layer).__name__}).")
            if i > 0:
                args, kwargs = (
                    ((), out)
                    if isinstance(out, dict)
                    else ((out, {}) if isinstance(out, tuple) else ((out,), {}))
                )
            if rngs is not None and _takes_keyword(layer, "rngs"):
                kwargs = {**kwargs, "rngs": rngs}
            out = layer(*args, **kwargs)
        return out


def _takes_keyword(fn: tp.Callable, name: str) -> bool:
    import inspect

    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return any(p.name == name and p.kind in kinds for p in params)
