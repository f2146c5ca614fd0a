"""`nnx.List`, `nnx.Dict` and `nnx.Sequential`.

Plain Python lists and dicts work as attributes too; these containers add
identity (they can be shared like Modules) and record structural changes.
"""

from __future__ import annotations

import typing as tp
from collections.abc import MutableMapping, MutableSequence

from nnxfn import core
from nnxfn.facade import context
from nnxfn.facade.module import Module, Object


class List(Object, MutableSequence):
    """A list that is a graph node: `self.layers = nnx.List([...])`."""

    def __init__(self, items: tp.Iterable = ()):
        object.__setattr__(self, "_items", list(items))

    def _write(self) -> None:
        context.check_write(self, self.__dict__.get("_nnx_frame"), "an item")
        context.bump_structure(self)

    def __getitem__(self, i: tp.Any) -> tp.Any:
        return self._items[i]

    def __setitem__(self, i: tp.Any, value: tp.Any) -> None:
        self._write()
        self._items[i] = value

    def __delitem__(self, i: tp.Any) -> None:
        self._write()
        del self._items[i]

    def __len__(self) -> int:
        return len(self._items)

    def insert(self, i: int, value: tp.Any) -> None:
        self._write()
        self._items.insert(i, value)

    def __getstate__(self) -> dict:
        return {"_items": self._items}


def _list_children(lst: List) -> list[tuple[int, tp.Any]]:
    return list(enumerate(lst._items))


def _list_create(cls: type, _static: tp.Any) -> List:
    lst = cls.__new__(cls)
    object.__setattr__(lst, "_items", [])
    return lst


def _list_set(lst: List, i: int, value: tp.Any) -> None:
    if i == len(lst._items):
        lst._items.append(value)
    else:
        if lst._items[i] is not value:  # a rebound item (see module._set_child)
            context.bump_structure(lst)
        lst._items[i] = value


def _list_del(lst: List, i: int) -> None:
    context.bump_structure(lst)
    del lst._items[i]


def _list_fill(lst: List, keys: tuple, values: tp.Sequence) -> None:
    lst._items.extend(values)  # a list `_list_create` just made: keys are 0, 1, ...


core.register_node_type(
    core.NodeImpl(List, _list_children, _list_create, _list_set, _list_del, fill=_list_fill)
)


class Dict(Module, MutableMapping):
    """A dict of sub-modules/arrays that is a Module: `d['enc']` or `d.enc`."""

    def __init__(self, *args: tp.Any, **kwargs: tp.Any):
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def __getitem__(self, key: str) -> tp.Any:
        try:
            return self.__dict__[key]
        except KeyError:
            raise KeyError(key) from None

    def __setitem__(self, key: str, value: tp.Any) -> None:
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

    def __call__(self, *args: tp.Any, rngs: tp.Any = None, **kwargs: tp.Any) -> tp.Any:
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
