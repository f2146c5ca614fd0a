"""Pooling functions following Flax's channels-last conventions.

Inputs have shape ``(batch..., spatial..., features)``; the window and strides
cover only the spatial dimensions.  An input without batch dimension
(``ndim == len(window_shape) + 1``) is pooled as a batch of one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import DTypeLike

PaddingLike = str | Sequence[tuple[int, int]]
#: The initial value of a reduction (`0.` for a sum, `-inf` for a max, ...).
Scalar = int | float | bool | jax.Array
Reduction = Callable[[jax.Array, jax.Array], jax.Array]

_STRING_PADDINGS = ("SAME", "VALID", "SAME_LOWER")


def _as_int_tuple(fn: str, arg: str, value: Sequence[int] | int) -> tuple[int, ...]:
    """Convert ``value`` to a tuple of ints, or raise a ValueError."""
    if isinstance(value, int):
        raise ValueError(
            f"{fn}: `{arg}` must be a sequence of ints (one per spatial "
            f"dimension), got the int {value!r}; use ({value},) instead."
        )
    try:
        out = tuple(int(v) for v in value)
    except TypeError as e:
        raise ValueError(f"{fn}: `{arg}` must be a sequence of ints, got {value!r}.") from e
    return out


def _normalize_padding(fn: str, padding: PaddingLike, num_spatial: int) -> str | tuple[tuple[int, int], ...]:
    """Validate ``padding``; return a string or per-spatial-dim (low, high) pairs."""
    if isinstance(padding, str):
        if padding.upper() not in _STRING_PADDINGS:
            raise ValueError(
                f"{fn}: `padding` must be 'SAME', 'VALID' or a sequence of "
                f"(low, high) pairs, got {padding!r}."
            )
        return padding.upper()
    try:
        given = [tuple(int(p) for p in pair) for pair in padding]
    except TypeError as e:
        raise ValueError(
            f"{fn}: `padding` must be 'SAME', 'VALID' or a sequence of (low, high) pairs, got {padding!r}."
        ) from e
    if len(given) != num_spatial or any(len(p) != 2 for p in given):
        raise ValueError(
            f"{fn}: `padding` must hold one (low, high) pair per spatial "
            f"dimension ({num_spatial} expected), got {padding!r}."
        )
    return tuple((low, high) for low, high in given)


def _pool(
    fn: str,
    inputs: jax.Array,
    init: Scalar,
    reduce_fn: Reduction,
    window_shape: Sequence[int],
    strides: Sequence[int] | None,
    padding: PaddingLike,
) -> jax.Array:
    """Shared implementation of :func:`pool`, reporting errors as ``fn``."""
    inputs = jnp.asarray(inputs)
    window = _as_int_tuple(fn, "window_shape", window_shape)
    n = len(window)
    if strides is None:
        stride = (1,) * n
    else:
        stride = _as_int_tuple(fn, "strides", strides)
    if len(stride) != n:
        raise ValueError(
            f"{fn}: `strides` must have one entry per window dimension "
            f"(len(window_shape)={n}), got strides={stride}."
        )
    if any(w < 1 for w in window) or any(s < 1 for s in stride):
        raise ValueError(
            f"{fn}: `window_shape` and `strides` entries must be >= 1, got "
            f"window_shape={window}, strides={stride}."
        )
    num_batch_dims = inputs.ndim - (n + 1)
    if num_batch_dims < 0:
        raise ValueError(
            f"{fn}: `inputs` of shape {inputs.shape} (rank {inputs.ndim}) is "
            f"too small for window_shape={window}; expected rank >= {n + 1} "
            "(batch..., spatial..., features)."
        )
    pad = _normalize_padding(fn, padding, n)

    single = num_batch_dims == 0
    if single:
        inputs = inputs[None]
        num_batch_dims = 1
    dims = (1,) * num_batch_dims + window + (1,)
    full_strides = (1,) * num_batch_dims + stride + (1,)
    if not isinstance(pad, str):
        pad = ((0, 0),) * num_batch_dims + pad + ((0, 0),)
    y = lax.reduce_window(inputs, init, reduce_fn, dims, full_strides, pad)
    if single:
        y = jnp.squeeze(y, axis=0)
    return y


def _extreme(dtype: DTypeLike, lowest: bool) -> Scalar:
    """Identity element of max (``lowest``) or min pooling for ``dtype``."""
    if jnp.issubdtype(dtype, jnp.inexact):
        return -jnp.inf if lowest else jnp.inf
    if jnp.issubdtype(dtype, jnp.bool_):
        return not lowest
    info = jnp.iinfo(dtype)
    return info.min if lowest else info.max


def pool(
    inputs: jax.Array,
    init: Scalar,
    reduce_fn: Reduction,
    window_shape: Sequence[int],
    strides: Sequence[int] | None,
    padding: PaddingLike,
) -> jax.Array:
    """Reduce sliding windows over the spatial dims of ``inputs``.

    Args:
      inputs: array of shape ``(batch..., spatial..., features)``.
      init: initial value of the reduction (e.g. ``0.`` for a sum).
      reduce_fn: binary reduction, e.g. ``lax.add`` or ``lax.max``.
      window_shape: window size per spatial dimension.
      strides: stride per spatial dimension (``None`` means all ones).
      padding: ``'SAME'``, ``'VALID'`` or a sequence of ``(low, high)`` pairs.
    """
    return _pool("pool", inputs, init, reduce_fn, window_shape, strides, padding)


def avg_pool(
    inputs: jax.Array,
    window_shape: Sequence[int],
    strides: Sequence[int] | None = None,
    padding: PaddingLike = "VALID",
    count_include_pad: bool = True,
) -> jax.Array:
    """Average pooling; with ``count_include_pad=False`` pads are not counted."""
    inputs = jnp.asarray(inputs)
    y = _pool("avg_pool", inputs, 0.0, lax.add, window_shape, strides, padding)
    if count_include_pad:
        return y / math.prod(_as_int_tuple("avg_pool", "window_shape", window_shape))
    n = len(tuple(window_shape))
    num_batch_dims = inputs.ndim - (n + 1)
    ones_shape = (1,) * max(num_batch_dims, 0) + inputs.shape[num_batch_dims:-1] + (1,)
    counts = _pool(
        "avg_pool",
        jnp.ones(ones_shape, dtype=y.dtype),
        0.0,
        lax.add,
        window_shape,
        strides,
        padding,
    )
    return y / counts


def max_pool(
    inputs: jax.Array,
    window_shape: Sequence[int],
    strides: Sequence[int] | None = None,
    padding: PaddingLike = "VALID",
) -> jax.Array:
    """Max pooling over the spatial dims of ``inputs``."""
    inputs = jnp.asarray(inputs)
    init = _extreme(inputs.dtype, lowest=True)
    return _pool("max_pool", inputs, init, lax.max, window_shape, strides, padding)


def min_pool(
    inputs: jax.Array,
    window_shape: Sequence[int],
    strides: Sequence[int] | None = None,
    padding: PaddingLike = "VALID",
) -> jax.Array:
    """Min pooling over the spatial dims of ``inputs``."""
    inputs = jnp.asarray(inputs)
    init = _extreme(inputs.dtype, lowest=False)
    return _pool("min_pool", inputs, init, lax.min, window_shape, strides, padding)


__all__ = ["avg_pool", "max_pool", "min_pool", "pool"]
