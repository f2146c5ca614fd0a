"""`nnx.call((graphdef, state))` and `graphdef.apply(state)`: call a method of the
node a pure (GraphDef, State) pair describes, and get the new pair back.

>>> # out, (graphdef, state) = nnx.call((graphdef, state)).layers[0](x)
"""

from __future__ import annotations

import typing as tp

from nnxfn.core import api
from nnxfn.core.graphdef import GraphDef


class CallableProxy:
    """Records attribute and item accesses; calling it runs `fn(accessor, ...)`."""

    __slots__ = ("_fn", "_steps")

    def __init__(self, fn: tp.Callable[..., tp.Any], steps: tuple = ()):
        object.__setattr__(self, "_fn", fn)
        object.__setattr__(self, "_steps", steps)

    def __getattr__(self, name: str) -> CallableProxy:
        if name.startswith("__"):
            raise AttributeError(name)
        return CallableProxy(self._fn, self._steps + (("attr", name),))

    def __getitem__(self, key: tp.Any) -> CallableProxy:
        return CallableProxy(self._fn, self._steps + (("item", key),))

    def __call__(self, *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        return self._fn(self._steps, *args, **kwargs)


def _resolve(node: tp.Any, steps: tuple) -> tp.Any:
    for kind, key in steps:
        node = getattr(node, key) if kind == "attr" else node[key]
    return node


def call(graphdef_state: tuple[GraphDef, tp.Any], /) -> tp.Any:
    """`out, (graphdef, state) = nnx.call((graphdef, state)).method(*args)`.

    Merges the pair, calls the method reached by the attribute/item accesses,
    and returns its output with the split of the (possibly updated) node."""

    def run(steps: tuple, *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        node = api.merge(*graphdef_state)
        out = _resolve(node, steps)(*args, **kwargs)
        return out, api.split(node)

    return CallableProxy(run)


def apply(graphdef: GraphDef, state: tp.Any, *states: tp.Any, graph: bool | None = None) -> tp.Any:
    """`out, (graphdef, state) = graphdef.apply(state).method(*args)`; see `call`."""
    return call((graphdef, state, *states))
