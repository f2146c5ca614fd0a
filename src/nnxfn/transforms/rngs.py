"""`split_rngs` and `fork_rngs`: prepare random streams for vmap/scan."""

from __future__ import annotations

import contextlib
import functools
import typing as tp

import jax
import jax.numpy as jnp

from nnxfn import core
from nnxfn.facade.rngs import RngStream
from nnxfn.transforms.boundary import is_node


def _streams(tree: tp.Any, only: tp.Any) -> list[RngStream]:
    pred = core.to_predicate(only)
    found, seen = [], set()
    for node in jax.tree_util.tree_leaves(tree, is_leaf=is_node):
        if not is_node(node):
            continue
        for path, value in core.iter_graph(node):
            if isinstance(value, RngStream) and id(value) not in seen:
                if pred(path, value.key):
                    seen.add(id(value))
                    found.append(value)
    return found


@contextlib.contextmanager
def _split(tree: tp.Any, splits: int | tuple[int, ...], only: tp.Any, squeeze: bool) -> tp.Iterator[None]:
    streams = _streams(tree, only)
    saved = [(s, s.key.raw_value, s.count.raw_value) for s in streams]
    shape = (splits,) if isinstance(splits, int) else tuple(splits)
    for s in streams:
        key = s()  # advances the stream, so the next split differs
        s.key.value = key if squeeze else jax.random.split(key, shape)
        s.count.value = jnp.zeros(() if squeeze else shape, jnp.uint32)
    try:
        yield
    finally:
        for s, key, count in saved:
            s.key.value = key
            s.count.value = count + 1


def split_rngs(node_or_fn: tp.Any = None, /, *, splits: int | tuple[int, ...],
               only: tp.Any = ..., squeeze: bool = False) -> tp.Any:
    """Split the keys of the `Rngs` streams into `splits` keys for the duration
    of a call, so `nnx.vmap`/`nnx.scan` (with the rng state mapped on axis 0)
    give each element its own key. The original keys (advanced by one draw)
    are restored afterwards.

    As a decorator: `@nnx.split_rngs(splits=4)` over an `@nnx.vmap` function;
    as a context manager: `with nnx.split_rngs(rngs, splits=4): ...`.
    """
    if node_or_fn is not None and is_node(node_or_fn):
        return _split(node_or_fn, splits, only, squeeze)

    def decorate(fn: tp.Callable) -> tp.Callable:
        @functools.wraps(fn)
        def wrapper(*args: tp.Any, **kwargs: tp.Any) -> tp.Any:
            with _split((args, kwargs), splits, only, squeeze):
                return fn(*args, **kwargs)

        return wrapper

    return decorate(node_or_fn) if callable(node_or_fn) else decorate


def fork_rngs(node: tp.Any, /, *, split: int | tuple[int, ...] | None = None,
              only: tp.Any = ...) -> tp.Any:
    """Like `split_rngs`, as a context manager over `node`'s streams (`split=None`
    gives each stream one fresh key)."""
    if split is None:
        return _split(node, (), only, squeeze=True)
    return _split(node, split, only, squeeze=False)
