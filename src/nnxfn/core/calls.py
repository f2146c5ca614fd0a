"""`nnx.call((graphdef, state))` and `graphdef.apply(state)`: call a method of the
node a pure (GraphDef, State) pair describes, and get the new pair back.

>>> # out, (graphdef, state) = nnx.call((graphdef, state)).layers[0](x)
"""

from __future__ import annotations

import dataclasses
import typing as tp

from nnxfn.core import api
from nnxfn.core.graphdef import APPLY, GraphDef


@dataclasses.dataclass(frozen=True)
class GetItem:
    """One step of a `DelayedAccessor`: `x[key]`."""

    key: object


@dataclasses.dataclass(frozen=True)
class GetAttr:
    """One step of a `DelayedAccessor`: `getattr(x, name)`."""

    name: str


@dataclasses.dataclass(frozen=True)
class DelayedAccessor:
    """A recorded chain of attribute and item accesses; `accessor(x)` replays it on `x`.

    >>> import types
    >>> DelayedAccessor().layers[0].kernel(types.SimpleNamespace(layers=[types.SimpleNamespace(kernel=3)]))
    3
    """

    actions: tuple[GetItem | GetAttr, ...] = ()

    def __call__(self, x: tp.Any) -> tp.Any:
        for action in self.actions:
            x = x[action.key] if isinstance(action, GetItem) else getattr(x, action.name)
        return x

    def __getattr__(self, name: str) -> DelayedAccessor:
        if name.startswith("__"):
            raise AttributeError(name)
        return DelayedAccessor(self.actions + (GetAttr(name),))

    def __getitem__(self, key: object) -> DelayedAccessor:
        return DelayedAccessor(self.actions + (GetItem(key),))


class CallableProxy:
    """Records attribute and item accesses; calling it runs `fn(accessor, *args, **kwargs)`
    with the `DelayedAccessor` of those accesses."""

    __slots__ = ("_callable", "_accessor")
    _callable: tp.Callable[..., tp.Any]
    _accessor: DelayedAccessor

    def __init__(self, fn: tp.Callable[..., tp.Any], accessor: DelayedAccessor | None = None):
        object.__setattr__(self, "_callable", fn)
        object.__setattr__(self, "_accessor", DelayedAccessor() if accessor is None else accessor)

    def __getattr__(self, name: str) -> CallableProxy:
        if name.startswith("__"):
            raise AttributeError(name)
        return CallableProxy(self._callable, getattr(self._accessor, name))

    def __getitem__(self, key: object) -> CallableProxy:
        return CallableProxy(self._callable, self._accessor[key])

    def __call__(self, *args: object, **kwargs: tp.Any) -> tp.Any:
        return self._callable(self._accessor, *args, **kwargs)


def call(graphdef_state: tuple[GraphDef, tp.Any], /) -> tp.Any:
    """`out, (graphdef, state) = nnx.call((graphdef, state)).method(*args)`.

    Merges the pair, calls the method reached by the attribute/item accesses,
    and returns its output with the split of the (possibly updated) node."""

    def run(accessor: DelayedAccessor, *args: object, **kwargs: tp.Any) -> tp.Any:
        node = api.merge(*graphdef_state)
        out = accessor(node)(*args, **kwargs)
        return out, api.split(node)

    return CallableProxy(run)


def apply(graphdef: GraphDef, state: tp.Any, *states: tp.Any, graph: bool | None = None) -> tp.Any:
    """`out, (graphdef, state) = graphdef.apply(state).method(*args)`; see `call`."""
    return call((graphdef, state, *states))


APPLY.fn = apply  # `GraphDef.apply` (graphdef.py sits below this module)
