"""Rngs: named random streams whose key and call count are state.

`rngs = nnx.Rngs(0, dropout=1)`; `rngs()` or `rngs.default()` draws from the
default stream, `rngs.params()`, `rngs['dropout']()` from named ones; unknown
names fall back to `default`. Each draw is `fold_in(key, count)` and
increments `count` (an `RngCount` Variable), so a stream never repeats a key.
"""

from __future__ import annotations

import typing as tp

import jax
import jax.numpy as jnp

from nnxfn.facade.module import Object
from nnxfn.facade.variables import RngCount, RngKey


def as_key(seed: tp.Any) -> jax.Array:
    """An int seed, a typed key, or a raw uint32 key -> a typed key."""
    if isinstance(seed, int):
        return jax.random.key(seed)
    seed = jnp.asarray(seed)
    if jax.dtypes.issubdtype(seed.dtype, jax.dtypes.prng_key):
        return seed
    if seed.dtype == jnp.uint32 and seed.shape[-1:] == (2,):
        return jax.random.wrap_key_data(seed)
    if seed.ndim == 0 and jnp.issubdtype(seed.dtype, jnp.integer):
        return jax.random.key(seed)
    raise TypeError(
        f"Rngs: cannot use a {seed.dtype} array of shape {seed.shape} as a seed. "
        "Pass an int, `jax.random.key(n)`, or a key array."
    )


class RngStream(Object):
    """One named stream: a key and a counter."""

    def __init__(self, key: tp.Any, *, tag: str):
        self.key = RngKey(as_key(key), tag=tag)
        self.count = RngCount(jnp.zeros((), jnp.uint32), tag=tag)
        self.tag = tag

    def __call__(self) -> jax.Array:
        key = jax.random.fold_in(self.key[...], self.count[...])
        self.count[...] = self.count[...] + 1
        return key

    def fork(self, *, split: int | tuple[int, ...] | None = None) -> RngStream:
        key = self()
        if split is not None:
            key = jax.random.split(key, split)
        return RngStream(key, tag=self.tag)


class Rngs(Object):
    """A set of named `RngStream`s.

    >>> rngs = Rngs(0, dropout=1)
    >>> k1, k2 = rngs.params(), rngs.params()
    >>> bool((jax.random.key_data(k1) != jax.random.key_data(k2)).any())
    True
    """

    def __init__(self, default: tp.Any = None, /, **streams: tp.Any):
        if default is not None:
            streams = {"default": default, **streams}
        if not streams:
            raise TypeError("Rngs needs a seed: `nnx.Rngs(0)` or `nnx.Rngs(params=0, dropout=1)`.")
        for name, seed in streams.items():
            if isinstance(seed, RngStream):
                seed = seed.key[...]
            setattr(self, name, RngStream(seed, tag=name))

    def _stream(self, name: str) -> RngStream:
        d = self.__dict__
        if isinstance(d.get(name), RngStream):
            return d[name]
        if isinstance(d.get("default"), RngStream):
            return d["default"]
        raise AttributeError(
            f"Rngs has no stream {name!r} and no 'default' stream to fall back to; "
            f"its streams are {sorted(self.streams())}. Create it with "
            f"`nnx.Rngs({name}=seed)` or give a default seed: `nnx.Rngs(0)`."
        )

    def __getattr__(self, name: str) -> RngStream:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._stream(name)

    def __getitem__(self, name: str) -> RngStream:
        return self._stream(name)

    def __call__(self) -> jax.Array:
        return self._stream("default")()

    def __contains__(self, name: str) -> bool:
        return isinstance(self.__dict__.get(name), RngStream)

    def streams(self) -> dict[str, RngStream]:
        return {k: v for k, v in self.__dict__.items() if isinstance(v, RngStream)}

    def items(self) -> tp.Iterator[tuple[str, RngStream]]:
        return iter(self.streams().items())

    def fork(self, *, split: int | tuple[int, ...] | None = None) -> Rngs:
        """New Rngs with keys drawn from these streams (split into arrays if asked)."""
        new = Rngs.__new__(Rngs)
        for name, stream in self.streams().items():
            setattr(new, name, stream.fork(split=split))
        return new


def reseed(node: tp.Any, /, **seeds: tp.Any) -> None:
    """Reset the streams named in `seeds` everywhere in `node` to new keys (count 0)."""
    from nnxfn import core

    for _, value in core.iter_graph(node):
        if isinstance(value, RngStream) and value.tag in seeds:
            value.key.value = as_key(seeds[value.tag])
            value.count.value = jnp.zeros((), jnp.uint32)
