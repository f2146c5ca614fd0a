"""Rngs: named random streams whose key and call count are state.

`rngs = nnx.Rngs(0, dropout=1)`; `rngs()` or `rngs.default()` draws from the
default stream, `rngs.params()`, `rngs['dropout']()` from named ones; unknown
names fall back to `default`. Each draw is `fold_in(key, count)` and
increments `count` (an `RngCount` Variable with the key's shape), so a
stream never repeats a key. Streams and `Rngs` also sample directly
(`rngs.normal((2, 3))`, `rngs.params.uniform((4,))`) and build keyless
initializers (`rngs.lecun_normal()((4, 8))`), each use drawing one key.
"""

from __future__ import annotations

import functools
import typing as tp

import jax
import jax.numpy as jnp

from nnxfn import core
from nnxfn.core.errors import path_str
from nnxfn.facade.module import Object
from nnxfn.facade.variables import RngCount, RngKey

Shape = tp.Union[int, tuple[int, ...]]
SplitSpec = tp.Union[Shape, None, tp.Mapping[tp.Any, tp.Union[Shape, None]]]

# jax.random samplers offered as methods: `stream.normal(shape)` is
# `jax.random.normal(stream(), shape)`.
SAMPLERS = (
    "bits",
    "uniform",
    "randint",
    "permutation",
    "choice",
    "normal",
    "multivariate_normal",
    "truncated_normal",
    "bernoulli",
    "beta",
    "cauchy",
    "dirichlet",
    "exponential",
    "gamma",
    "loggamma",
    "poisson",
    "gumbel",
    "categorical",
    "laplace",
    "logistic",
    "pareto",
    "t",
    "chisquare",
    "f",
    "rademacher",
    "maxwell",
    "double_sided_maxwell",
    "weibull_min",
    "orthogonal",
    "generalized_normal",
    "ball",
    "rayleigh",
    "wald",
    "geometric",
    "triangular",
    "lognormal",
    "binomial",
    "multinomial",
)
# Initializer builders offered as methods: `stream.lecun_normal()(shape)`.
# (`normal`, `uniform`, `orthogonal`, `truncated_normal` are the samplers above.)
INITIALIZERS = (
    "delta_orthogonal",
    "glorot_normal",
    "glorot_uniform",
    "he_normal",
    "he_uniform",
    "kaiming_normal",
    "kaiming_uniform",
    "lecun_normal",
    "lecun_uniform",
    "variance_scaling",
    "xavier_normal",
    "xavier_uniform",
)


def as_key(seed: object) -> jax.Array:
    """An int seed, a typed key (array), or a raw uint32 key (array) -> a typed key."""
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


def _shape(k: Shape) -> tuple[int, ...]:
    return (k,) if isinstance(k, int) else tuple(k)


class KeylessInitializer:
    """An initializer bound to a stream: `init(shape, dtype=...)` draws one key
    per call (`rngs.lecun_normal()((4, 8))`)."""

    def __init__(self, stream: tp.Callable[[], jax.Array], init: tp.Callable):
        self.stream, self.init = stream, init

    def __call__(self, shape: Shape, *args: object, **kwargs: object) -> jax.Array:
        return self.init(self.stream(), shape, *args, **kwargs)


class _Sampling:
    """Sampler and initializer methods for anything callable as `self() -> key`."""

    def __call__(self) -> jax.Array:
        raise NotImplementedError


def _sampler(name: str) -> tp.Callable:
    fn = getattr(jax.random, name)

    @functools.wraps(fn)
    def method(self: _Sampling, *args: object, **kwargs: object) -> jax.Array:
        return fn(self(), *args, **kwargs)

    method.__doc__ = f"`jax.random.{name}` with the next key of this stream."
    return method


def _initializer(name: str) -> tp.Callable:
    builder = getattr(jax.nn.initializers, name)  # the numbers of `nnx.initializers`

    def method(self: _Sampling, *args: object, **kwargs: object) -> KeylessInitializer:
        return KeylessInitializer(self, builder(*args, **kwargs))

    method.__name__ = method.__qualname__ = name
    method.__doc__ = (
        f"`jax.nn.initializers.{name}(...)` bound to this stream: returns "
        "`init(shape, dtype=...)`, which draws a fresh key per call."
    )
    return method


for _name in SAMPLERS:
    if hasattr(jax.random, _name):
        setattr(_Sampling, _name, _sampler(_name))
for _name in INITIALIZERS:
    setattr(_Sampling, _name, _initializer(_name))
del _name


class RngStream(_Sampling, Object):
    """One named stream: a key (or an array of keys) and a counter of its shape."""

    def __init__(self, key: object, *, tag: str):
        key = as_key(key)
        self.key = RngKey(key, tag=tag)
        self.count = RngCount(jnp.zeros(key.shape, jnp.uint32), tag=tag)
        self.tag = tag

    def __call__(self) -> jax.Array:
        count = self.count[...]
        self.count[...] = count + 1  # first: a write from the wrong trace raises before the key is used
        return jax.random.fold_in(self.key[...], count)

    def split(self, k: Shape) -> RngStream:
        """A new stream whose key is this stream's next key split into shape `k`."""
        return type(self)(jax.random.split(self(), k), tag=self.tag)

    def fork(self, *, split: Shape | None = None) -> RngStream:
        """A new stream seeded with this stream's next key (split into `split` keys if given)."""
        key = self()
        if split is not None:
            key = jax.random.split(key, split)
        return type(self)(key, tag=self.tag)

    def broadcast(self, k: Shape) -> RngStream:
        """A new stream whose key is this stream's next key repeated to shape `k`."""
        key = self()
        return type(self)(jnp.broadcast_to(key, _shape(k) + key.shape), tag=self.tag)


def _per_stream(spec: SplitSpec) -> list[tuple[core.filters.Predicate, Shape | None]]:
    """`5`, `(2, 3)`, `None` or `{filter: shape or None}` -> ordered (predicate, shape) rules."""
    if spec is None or isinstance(spec, (int, tuple)):
        spec = {...: spec}
    return [(core.to_predicate(f), v) for f, v in spec.items()]


def _rule(rules: list[tuple[core.filters.Predicate, tp.Any]], name: str, stream: RngStream) -> tp.Any:
    for pred, value in rules:
        if pred((name, "key"), stream.key):
            return value
    return None


class Rngs(_Sampling, Object):
    """A set of named `RngStream`s.

    >>> rngs = Rngs(0, dropout=1)
    >>> k1, k2 = rngs.params(), rngs.params()
    >>> bool((jax.random.key_data(k1) != jax.random.key_data(k2)).any())
    True
    >>> rngs.normal((2, 3)).shape
    (2, 3)
    """

    def __init__(self, default: object = None, /, **streams: object):
        if isinstance(default, tp.Mapping):
            streams = {**default, **streams}
        elif default is not None:
            streams = {**streams, "default": default}
        if not streams:
            raise TypeError("Rngs needs a seed: `nnx.Rngs(0)` or `nnx.Rngs(params=0, dropout=1)`.")
        for name, seed in streams.items():
            if isinstance(seed, RngStream):
                seed = seed.key[...]
            setattr(self, name, RngStream(seed, tag=name))

    def _stream(self, name: str, error: type[Exception] = AttributeError) -> RngStream:
        d = self.__dict__
        if isinstance(d.get(name), RngStream):
            return d[name]
        if isinstance(d.get("default"), RngStream):
            return d["default"]
        raise error(
            f"No RngStream named {name!r} found in Rngs, and no 'default' stream to fall "
            f"back to; its streams are {sorted(self.streams())}. Create it with "
            f"`nnx.Rngs({name}=seed)` or give a default seed: `nnx.Rngs(0)`."
        )

    def __getattr__(self, name: str) -> RngStream:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._stream(name)

    def __getitem__(self, name: str) -> RngStream:
        return self._stream(name, KeyError)

    def __call__(self) -> jax.Array:
        return self._stream("default")()

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and isinstance(self.__dict__.get(name), RngStream)

    def __iter__(self) -> tp.Iterator[str]:
        return iter(self.streams())

    def __len__(self) -> int:
        return len(self.streams())

    def streams(self) -> dict[str, RngStream]:
        return {k: v for k, v in self.__dict__.items() if isinstance(v, RngStream)}

    def items(self) -> tp.Iterator[tuple[str, RngStream]]:
        return iter(self.streams().items())

    def _map(self, spec: SplitSpec, method: str, default: tp.Callable | None) -> Rngs:
        rules = _per_stream(spec)
        new = {}
        for name, stream in self.items():
            k = _rule(rules, name, stream)
            if k is not None:
                new[name] = getattr(stream, method)(k)
            else:
                new[name] = default(stream) if default else stream
        return Rngs(**new)

    def split(self, k: SplitSpec) -> Rngs:
        """New Rngs whose streams' keys are split: `rngs.split(5)` (every stream),
        `rngs.split({'params': 5, 'dropout': None, ...: (2, 5)})` (first matching
        filter wins; `None` keeps the stream's key). Split streams advance by one."""
        return self._map(k, "split", None)

    def broadcast(self, k: SplitSpec) -> Rngs:
        """Like `split`, but every new key is one fresh key repeated to the shape."""
        return self._map(k, "broadcast", None)

    def fork(self, /, *, split: SplitSpec = None) -> Rngs:
        """New Rngs with a fresh key drawn from every stream (split into arrays
        for the streams `split` selects); every stream advances by one."""
        rules = _per_stream(split) if split is not None else []
        new = {}
        for name, stream in self.items():
            new[name] = stream.fork(split=_rule(rules, name, stream))
        return Rngs(**new)


def _scalars_only(path: tuple, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    if shape != ():
        raise ValueError(
            f"reseed: the stream at {path_str(path)} "
            f"has a key array of shape {shape}, and policy='scalars_only' only reseeds scalar "
            "keys. Pass `policy='match_shape'` to split the new key to that shape, or a "
            "callable `(path, key, shape) -> new_key`."
        )
    return key


def _match_shape(path: tuple, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    return key if shape == () else jax.random.split(key, shape)


def reseed(
    node: object, /, *, graph: bool | None = None, policy: str | tp.Callable = "scalars_only", **seeds: object
) -> None:
    """Give the streams named in `seeds`, everywhere in `node`, new keys and zero counts.

    Each stream's new key is drawn from `nnx.Rngs(**seeds)` (so a layer that
    forked its stream at construction repeats its first draws exactly).
    `policy`: 'scalars_only' (a key array raises), 'match_shape' (the new key
    is split to the array's shape) or `(path, key, shape) -> key`.
    """
    del graph  # accepted for Flax compatibility; one behaviour
    if policy == "scalars_only":
        policy = _scalars_only
    elif policy == "match_shape":
        policy = _match_shape
    elif not callable(policy):
        raise ValueError(
            f"reseed: policy must be 'scalars_only', 'match_shape' or a callable "
            f"(path, key, shape) -> key, got {policy!r}."
        )
    source = Rngs(**seeds)
    for path, value in core.iter_graph(node):
        if isinstance(value, RngStream) and value.tag in seeds:
            key = policy(path, source[value.tag](), tuple(value.key.shape))
            value.key.value = key
            value.count.value = jnp.zeros(key.shape, jnp.uint32)
