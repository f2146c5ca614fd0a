"""The functions under the normalization layers: statistics and the normalization.

Statistics are computed in at least float32; `apply_normalization` casts its result to
the layer's `dtype` (default: the common dtype of the input and the params).

>>> x = jnp.arange(6.0).reshape(2, 3)
>>> mean, var = compute_stats(x, (1,), None, use_fast_variance=False)
>>> mean, var.round(4)
(Array([1., 4.], dtype=float32), Array([0.6667, 0.6667], dtype=float32))
>>> apply_normalization(x, mean, var, None, None, (1,), (), None, 0.0).round(2)
Array([[-1.22,  0.  ,  1.22],
       [-1.22,  0.  ,  1.22]], dtype=float32)
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from nnxfn.nn.common import int_tuple, normalize_axes
from nnxfn.nn.types import Array, Axes, AxisIndexGroups, Dtype


def sorted_axes(ndim: int, axes: Axes, layer: str) -> tuple[int, ...]:
    """`axes` as distinct non-negative axes in increasing order; a ValueError
    naming `layer` if one is out of range for inputs of rank `ndim`."""
    return tuple(sorted(set(normalize_axes(int_tuple(axes), ndim, layer))))


def _abs_sq(x: Array) -> Array:
    return lax.square(lax.real(x)) + lax.square(lax.imag(x)) if jnp.iscomplexobj(x) else lax.square(x)


def compute_stats(
    x: Array,
    axes: tuple[int, ...],
    dtype: Dtype | None,
    axis_name: str | None = None,
    axis_index_groups: AxisIndexGroups = None,
    use_mean: bool = True,
    use_fast_variance: bool = True,
    mask: Array | None = None,
) -> tuple[Array, Array]:
    """(mean, var) over `axes` (dropped), in at least float32, averaged over
    `axis_name` if given; only positions where `mask` is true count."""
    dtype = jnp.promote_types(jnp.result_type(x) if dtype is None else dtype, jnp.float32)
    x = jnp.asarray(x, dtype)

    def mean(*xs: Array) -> tuple[Array, ...]:
        mus = tuple(v.mean(axes, where=mask) for v in xs)
        if axis_name is None:
            return mus
        stacked = lax.pmean(jnp.stack(mus), axis_name, axis_index_groups=axis_index_groups)
        return tuple(stacked[i] for i in range(len(xs)))

    if not use_mean:
        (var,) = mean(_abs_sq(x))
        return jnp.zeros_like(var), var
    if use_fast_variance:
        mu, mu2 = mean(x, _abs_sq(x))
        return mu, jnp.maximum(0.0, mu2 - _abs_sq(mu))
    (mu,) = mean(x)
    (var,) = mean(_abs_sq(x - jnp.expand_dims(mu, axes)))
    return mu, var


def result_dtype(*args: Array | None, dtype: Dtype | None = None) -> Dtype:
    """`dtype` if given, else the common dtype of `args`, at least float32 if not inexact."""
    if dtype is not None:
        return dtype
    common = jnp.result_type(*[a for a in args if a is not None])
    return common if jnp.issubdtype(common, jnp.inexact) else jnp.promote_types(jnp.float32, common)


def apply_normalization(
    x: Array,
    mean: Array,
    var: Array,
    scale: Array | None,
    bias: Array | None,
    reduction_axes: tuple[int, ...],
    feature_axes: tuple[int, ...],
    dtype: Dtype | None,
    epsilon: float,
) -> Array:
    """`(x - mean) / sqrt(var + epsilon) * scale + bias`, cast to `dtype`
    (default: the common dtype of x, scale and bias)."""
    stats_shape = [1 if i in reduction_axes else n for i, n in enumerate(x.shape)]
    feature_shape = [n if i in feature_axes else 1 for i, n in enumerate(x.shape)]
    mul = lax.rsqrt(jnp.reshape(var, stats_shape) + epsilon)
    args = [x]
    if scale is not None:
        scale = jnp.reshape(scale, feature_shape)
        mul = mul * scale
        args.append(scale)
    y = (x - jnp.reshape(mean, stats_shape)) * mul
    if bias is not None:
        bias = jnp.reshape(bias, feature_shape)
        y = y + bias
        args.append(bias)
    return jnp.asarray(y, result_dtype(*args, dtype=dtype))


def check_features(layer: str, x: Array, feature_axes: tuple[int, ...], num_features: int) -> None:
    """Inputs must carry `num_features` on `feature_axes`."""
    size = 1
    for ax in feature_axes:
        size *= x.shape[ax]
    if size != num_features:
        raise ValueError(
            f"{layer}: expected {num_features} features on axes {feature_axes} "
            f"(num_features={num_features}), got inputs of shape {x.shape}."
        )


__all__ = ["check_features", "compute_stats", "apply_normalization", "result_dtype", "sorted_axes"]
