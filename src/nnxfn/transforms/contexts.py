"""`split_context`, `merge_context`, `update_context`: Flax's building blocks for
writing a lifted transform by hand.

- Several `ctx.split(...)` calls inside one `split_context()` share references:
  an object already split comes back as a reference with no state of its own.
  Several `ctx.merge(...)` inside one `merge_context()` share objects the same
  way, so a reference merges to the object merged before.
- Under `update_context(tag)`, an outer `split_context(tag)`, then (inside a
  JAX transform) `merge_context(tag, True)`, `split_context(tag)`, and
  finally an outer `merge_context(tag, False)` update the *original* objects:
  values, attributes, even swapped sub-objects, as nnxfn's own transforms do.

>>> with nnx.update_context('mine'):                              # doctest: +SKIP
...     with nnx.split_context('mine') as ctx:
...         graphdef, state = ctx.split(model)
...     graphdef, state = jax.jit(inner)(graphdef, state)  # merge(.., True) / split inside
...     with nnx.merge_context('mine', False) as ctx:
...         model_again = ctx.merge(graphdef, state)      # `model` itself, updated
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import typing as tp

import jax

from nnxfn import core
from nnxfn.core.graphdef import GraphDef

F = tp.TypeVar("F", bound=tp.Callable[..., tp.Any])


@dataclasses.dataclass(frozen=True)
class ContextGraphDef:
    """The graphdef `SplitContext.split` returns: the structure of every object split
    so far in the context (`graphdef`), which of them this is (`position`), and,
    for an inner split under an update context, which objects were the outer ones."""

    graphdef: GraphDef
    position: int
    origins: tuple[tuple[int, int], ...] = ()


jax.tree_util.register_pytree_node(ContextGraphDef, lambda g: ((), g), lambda g, _: g)


class UpdateContext:
    """The bookkeeping of one `update_context(tag)`: the outer objects (by index of
    the outer split) and, once merged inside, which fresh object stands for which."""

    def __init__(self, tag: tp.Hashable):
        self.tag = tag
        self.outer_objects: dict[int, tp.Any] | None = None
        self.inner_index: dict[int, int] | None = None  # id(inner object) -> outer index

    def __repr__(self) -> str:
        return f"UpdateContext({self.tag!r})"


class _Stacks(threading.local):
    def __init__(self) -> None:
        self.by_tag: dict[tp.Hashable, list[UpdateContext]] = {}


_STACKS = _Stacks()


class update_context:  # noqa: N801 - Flax's name
    """Context manager (or decorator) making an `UpdateContext` for `tag` current."""

    def __init__(self, tag: tp.Hashable):
        self.tag = tag

    def __enter__(self) -> UpdateContext:
        ctx = UpdateContext(self.tag)
        _STACKS.by_tag.setdefault(self.tag, []).append(ctx)
        return ctx

    def __exit__(self, *exc: tp.Any) -> None:
        stack = _STACKS.by_tag[self.tag]
        stack.pop()
        if not stack:
            del _STACKS.by_tag[self.tag]

    def __call__(self, fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: tp.Any, **kwargs: tp.Any) -> tp.Any:
            with update_context(self.tag):
                return fn(*args, **kwargs)

        return tp.cast(F, wrapper)


def current_update_context(tag: tp.Hashable) -> UpdateContext:
    """The innermost active `UpdateContext` for `tag`."""
    stack = _STACKS.by_tag.get(tag)
    if not stack:
        raise ValueError(f"No update context found for tag {tag!r}; use `nnx.update_context({tag!r})`.")
    return stack[-1]


def _active(tag: tp.Hashable | None) -> UpdateContext | None:
    if tag is None:
        return None
    stack = _STACKS.by_tag.get(tag)
    return stack[-1] if stack else None


class SplitContext:
    """`split_context()`'s object: `split(node, *filters) -> (graphdef, *states)`."""

    def __init__(self, ctxtag: tp.Hashable | None):
        self._tag = ctxtag
        self._roots: list[tp.Any] = []

    def split(self, node: tp.Any, *filters: tp.Any) -> tuple:
        self._roots.append(node)
        objects: list = []
        graphdef, pairs = core.flatten(list(self._roots), copy=True, objects=objects)
        k = len(self._roots) - 1
        flat = [(p[1:], leaf) for p, leaf in pairs if p[0] == k]
        state = core.State.from_flat_path(flat)
        origins: tuple = ()
        uc = _active(self._tag)
        if uc is not None:
            if uc.inner_index is None:  # the outer split: remember the originals
                uc.outer_objects = dict(enumerate(objects))
            else:  # an inner split: say which objects stand for outer ones
                origins = tuple((i, uc.inner_index[id(o)]) for i, o in enumerate(objects)
                                if id(o) in uc.inner_index)
        states = core.split_state(state, *filters) if filters else state
        states = states if isinstance(states, tuple) else (states,)
        return (ContextGraphDef(graphdef, k, origins), *states)


class MergeContext:
    """`merge_context()`'s object: `merge(graphdef, *states) -> node`."""

    def __init__(self, ctxtag: tp.Hashable | None, inner: bool | None):
        self._tag, self._inner = ctxtag, inner
        self._leaves: dict = {}
        self._objects: dict[int, tp.Any] = {}

    def merge(self, graphdef: ContextGraphDef | GraphDef, *states: tp.Any) -> tp.Any:
        if isinstance(graphdef, GraphDef):
            return core.merge(graphdef, *states)
        k = graphdef.position
        for state in states:
            for path, leaf in state.flat_state():
                self._leaves[(k,) + tuple(path)] = leaf
        reuse = dict(self._objects)
        uc = _active(self._tag)
        if uc is not None and self._inner is False and uc.outer_objects is not None:
            for new_i, outer_i in graphdef.origins:  # back onto the caller's objects
                reuse.setdefault(new_i, uc.outer_objects[outer_i])
        objects: dict[int, tp.Any] = {}
        leaves = {p: v for p, v in self._leaves.items() if p[0] <= k}
        roots = core.unflatten(graphdef.graphdef, leaves, reuse=reuse, objects=objects)
        self._objects.update(objects)
        if uc is not None and self._inner:
            uc.inner_index = {id(o): i for i, o in objects.items()}
        return roots[k]


class split_context:  # noqa: N801 - Flax's name
    """`with nnx.split_context(tag) as ctx: graphdef, state = ctx.split(node)`."""

    def __init__(self, ctxtag: tp.Hashable | None = None):
        self.ctxtag = ctxtag

    def __enter__(self) -> SplitContext:
        self._ctx = SplitContext(self.ctxtag)
        return self._ctx

    def __exit__(self, *exc: tp.Any) -> None:
        del self._ctx


class merge_context:  # noqa: N801 - Flax's name
    """`with nnx.merge_context(tag, inner) as ctx: node = ctx.merge(graphdef, state)`."""

    def __init__(self, ctxtag: tp.Hashable | None = None, inner: bool | None = None):
        self.ctxtag, self.inner = ctxtag, inner

    def __enter__(self) -> MergeContext:
        self._ctx = MergeContext(self.ctxtag, self.inner)
        return self._ctx

    def __exit__(self, *exc: tp.Any) -> None:
        del self._ctx


__all__ = [
    "ContextGraphDef", "MergeContext", "SplitContext", "UpdateContext",
    "current_update_context", "merge_context", "split_context", "update_context",
]
