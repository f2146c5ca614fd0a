"""Dtype helpers for layers (`nnx.nn.dtypes` in Flax): the one place layers
promote their inputs and parameters to a common dtype.

>>> import jax.numpy as jnp
>>> x, w = promote_dtype((jnp.ones(2, jnp.int32), jnp.ones(2, jnp.bfloat16)))
>>> x.dtype, w.dtype
(dtype(bfloat16), dtype(bfloat16))
>>> canonicalize_dtype(jnp.ones(2, jnp.int32))
dtype('float32')
"""

from __future__ import annotations

from typing import Protocol, TypeVar, cast

import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike

T = TypeVar("T", bound=tuple)


class PromoteDtypeFn(Protocol):
    """Signature of a dtype promotion function: ``fn(args, dtype=None)``."""

    def __call__(self, args: T, /, *, dtype: DTypeLike | None = None, inexact: bool = True) -> T: ...


def canonicalize_dtype(
    *args: ArrayLike | None, dtype: DTypeLike | None = None, inexact: bool = True
) -> DTypeLike:
    """The dtype ``args`` should be cast to: ``dtype`` if given, else the JAX
    result type of the non-``None`` args (promoted to at least float32 when
    ``inexact``). Raises ``ValueError`` if ``inexact`` and the dtype is not."""
    if dtype is None:
        arrays = [jnp.asarray(a) for a in args if a is not None]
        dtype = jnp.result_type(*arrays) if arrays else jnp.float32
        if inexact and not jnp.issubdtype(dtype, jnp.inexact):
            dtype = jnp.promote_types(jnp.float32, dtype)
    if inexact and not jnp.issubdtype(dtype, jnp.inexact):
        raise ValueError(f"dtype must be inexact (a float or complex type), got {dtype}")
    return dtype


def promote_dtype(args: T, /, *, dtype: DTypeLike | None = None, inexact: bool = True) -> T:
    """Cast every non-``None`` value in the tuple ``args`` to one dtype
    (``canonicalize_dtype``'s); ``None`` entries stay ``None``."""
    dtype = canonicalize_dtype(*args, dtype=dtype, inexact=inexact)
    return cast(T, tuple(None if a is None else jnp.asarray(a, dtype) for a in args))
