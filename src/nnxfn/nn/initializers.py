"""Parameter initializers with Flax NNX-compatible names, signatures and defaults.

Every initializer is a callable ``init(key, shape, dtype=jnp.float_) -> Array``;
the builders below (``normal``, ``variance_scaling``, ...) return such callables.
The numbers are JAX's own ``jax.nn.initializers`` (a runtime dependency), whose
defaults coincide with Flax's: ``normal(stddev=1e-2)``, ``uniform(scale=1e-2)``,
``truncated_normal(stddev=1e-2, lower=-2., upper=2.)``, fan axes
``in_axis=-2, out_axis=-1``. ``orthogonal``/``delta_orthogonal`` additionally
support 16-bit float dtypes on CPU.

Unlike JAX's closures, the returned initializers are small objects that
remember their builder and arguments: they pickle and deepcopy (so do the
layers and models holding them), compare equal when built alike, and show
how they were built in their repr.

>>> init = variance_scaling(2.0, 'fan_in', 'truncated_normal')
>>> init
variance_scaling(2.0, 'fan_in', 'truncated_normal')
>>> import pickle; pickle.loads(pickle.dumps(init)) == init
True
"""

from __future__ import annotations

import inspect
import typing as tp
from typing import Callable

import jax
import jax.nn.initializers as _jinit
import jax.numpy as jnp
from jax.typing import DTypeLike

from nnxfn.nn.types import Shape

#: Protocol type of an initializer: ``(key, shape, dtype=...) -> Array``.
Initializer = _jinit.Initializer

# Plain initializers (callable directly as ``init(key, shape, dtype)``); JAX's
# module-level functions, which pickle by reference.
zeros = _jinit.zeros
ones = _jinit.ones


def _frozen(value: object) -> object:
    """Lists (e.g. `in_axis=[0, 1]`) as tuples, so equal initializers hash alike."""
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


class _Built:
    """An initializer built by `builder(*args, **kwargs)`: calls the JAX
    initializer it describes, made on first use (and not pickled)."""

    __slots__ = ("name", "args", "kwargs", "_fn")

    def __init__(self, name: str, *args: object, **kwargs: object):
        self.name = name
        self.args = tuple(_frozen(a) for a in args)
        self.kwargs = tuple(sorted((k, _frozen(v)) for k, v in kwargs.items()))
        self._fn: Callable[..., jax.Array] | None = None

    def _make(self) -> Callable[..., jax.Array]:
        return getattr(_jinit, self.name)(*self.args, **dict(self.kwargs))

    def __call__(self, key: jax.Array, shape: Shape, *args: object, **kwargs: object) -> jax.Array:
        if self._fn is None:
            self._fn = self._make()
        return self._fn(key, shape, *args, **kwargs)

    def __getstate__(self) -> tuple:
        return self.name, self.args, self.kwargs

    def __setstate__(self, state: tuple) -> None:
        self.name, self.args, self.kwargs = state
        self._fn = None

    def __reduce__(self) -> tuple:
        return (_rebuild, (type(self), self.name, self.args, self.kwargs))

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        try:
            return bool((self.name, self.args, self.kwargs) == (other.name, other.args, other.kwargs))
        except (TypeError, ValueError):  # array arguments: equal only if the same object
            return self is other

    def __hash__(self) -> int:
        try:
            return hash((type(self), self.name, self.args, self.kwargs))
        except TypeError:  # an unhashable argument (e.g. an array `value`)
            return hash((type(self), self.name))

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs]
        return f"{self.name}({', '.join(parts)})"


def _rebuild(cls: type[_Built], name: str, args: tuple, kwargs: tuple) -> _Built:
    obj = cls.__new__(cls)
    obj.__setstate__((name, args, kwargs))
    return obj


class _QRBuilt(_Built):
    """A QR-based initializer (orthogonal, delta_orthogonal). LAPACK has no
    bfloat16/float16 QR, so those dtypes are sampled in float32 and cast."""

    __slots__ = ()

    def __call__(  # type: ignore[override]  # takes only a dtype positionally, where JAX's take any
        self, key: jax.Array, shape: Shape, dtype: DTypeLike | None = None, **kwargs: object
    ) -> jax.Array:
        wanted = self._builder_dtype() if dtype is None else dtype
        if wanted is not None and jnp.issubdtype(wanted, jnp.floating) and jnp.dtype(wanted).itemsize < 4:
            return super().__call__(key, shape, jnp.float32, **kwargs).astype(wanted)
        if dtype is None:
            return super().__call__(key, shape, **kwargs)
        return super().__call__(key, shape, dtype, **kwargs)

    def _builder_dtype(self) -> DTypeLike | None:
        """The dtype given to the builder (its third argument), if any."""
        found = self.args[2] if len(self.args) > 2 else dict(self.kwargs).get("dtype")
        return tp.cast("DTypeLike | None", found)  # the builder's arguments are kept untyped


def _builder(name: str, doc: str, cls: type[_Built] = _Built) -> Callable[..., Initializer]:
    jax_builder = getattr(_jinit, name)

    def build(*args: object, **kwargs: object) -> Initializer:
        return cls(name, *args, **kwargs)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"{doc}\n\nArguments as `jax.nn.initializers.{name}`."
    build.__signature__ = inspect.signature(jax_builder)  # type: ignore[attr-defined]  # inspect reads it
    return build


# Initializer builders.
constant = _builder("constant", "Fill with `value`.")
normal = _builder("normal", "Normal(0, stddev) samples; stddev defaults to 1e-2.")
uniform = _builder("uniform", "Uniform samples in [0, scale); scale defaults to 1e-2.")
truncated_normal = _builder(
    "truncated_normal", "Normal(0, stddev) truncated to [lower, upper] standard deviations."
)
variance_scaling = _builder(
    "variance_scaling", "Samples scaled by `scale / fan` (fan_in, fan_out or fan_avg)."
)
lecun_normal = _builder("lecun_normal", "Truncated normal, variance 1 / fan_in.")
lecun_uniform = _builder("lecun_uniform", "Uniform, variance 1 / fan_in.")
he_normal = _builder("he_normal", "Truncated normal, variance 2 / fan_in.")
he_uniform = _builder("he_uniform", "Uniform, variance 2 / fan_in.")
kaiming_normal = _builder("kaiming_normal", "Same as `he_normal`.")
kaiming_uniform = _builder("kaiming_uniform", "Same as `he_uniform`.")
glorot_normal = _builder("glorot_normal", "Truncated normal, variance 2 / (fan_in + fan_out).")
glorot_uniform = _builder("glorot_uniform", "Uniform, variance 2 / (fan_in + fan_out).")
xavier_normal = _builder("xavier_normal", "Same as `glorot_normal`.")
xavier_uniform = _builder("xavier_uniform", "Same as `glorot_uniform`.")
orthogonal = _builder(
    "orthogonal",
    "Orthogonal initializer: the matrix obtained by flattening all axes but `column_axis` "
    "has orthonormal rows or columns, times `scale`.",
    _QRBuilt,
)
delta_orthogonal = _builder(
    "delta_orthogonal",
    "Delta-orthogonal conv kernel initializer (3-5 D kernels): an orthogonal matrix at "
    "the spatial centre and zeros elsewhere.",
    _QRBuilt,
)


def zeros_init() -> Initializer:
    """Return an initializer that fills arrays with zeros (``zeros`` itself)."""
    return zeros


def ones_init() -> Initializer:
    """Return an initializer that fills arrays with ones (``ones`` itself)."""
    return ones


__all__ = [
    "Initializer",
    "constant",
    "delta_orthogonal",
    "glorot_normal",
    "glorot_uniform",
    "he_normal",
    "he_uniform",
    "kaiming_normal",
    "kaiming_uniform",
    "lecun_normal",
    "lecun_uniform",
    "normal",
    "ones",
    "ones_init",
    "orthogonal",
    "truncated_normal",
    "uniform",
    "variance_scaling",
    "xavier_normal",
    "xavier_uniform",
    "zeros",
    "zeros_init",
]
