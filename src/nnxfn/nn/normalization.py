"""Normalization layers (Flax NNX API): BatchNorm, LayerNorm, RMSNorm,
GroupNorm, InstanceNorm, and the weight wrappers WeightNorm and SpectralNorm.

Statistics are computed in at least float32. `scale`/`bias` are `Param`s of
shape `(num_features,)`; BatchNorm's running `mean`/`var` are `BatchStat`s,
updated in training mode as `ra = momentum * ra + (1 - momentum) * batch`.
"""

from __future__ import annotations

import typing as tp
from types import MappingProxyType

import jax
import jax.numpy as jnp
from jax import lax

from nnxfn.core import iter_graph, to_predicate
from nnxfn.facade.module import Module
from nnxfn.facade.rngs import Rngs
from nnxfn.facade.variables import BatchStat, Param, Variable
from nnxfn.nn import initializers
from nnxfn.nn.attention_ops import PromoteDtypeFn, promote_dtype

Array = jax.Array
Dtype = tp.Any
Axes = tp.Union[int, tp.Sequence[int]]
Initializer = tp.Callable[..., Array]
_EMPTY: tp.Mapping[str, tp.Any] = MappingProxyType({})


# -- functional core -----------------------------------------------------------------
def _axes(ndim: int, axes: Axes, layer: str) -> tuple[int, ...]:
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    for ax in axes:
        if not -ndim <= ax < ndim:
            raise ValueError(f"{layer}: axis {ax} is out of range for inputs of rank {ndim}.")
    return tuple(sorted({ax % ndim for ax in axes}))


def _abs_sq(x: Array) -> Array:
    return lax.square(lax.real(x)) + lax.square(lax.imag(x)) if jnp.iscomplexobj(x) else lax.square(x)


def compute_stats(
    x: Array,
    axes: tuple[int, ...],
    dtype: Dtype | None,
    axis_name: str | None = None,
    axis_index_groups: tp.Any = None,
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


def normalize(
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
    (out_dtype,) = {a.dtype for a in promote_dtype(tuple(args), dtype=dtype)[:1]}
    return jnp.asarray(y, out_dtype)


def _check_features(layer: str, x: Array, feature_axes: tuple[int, ...], num_features: int) -> None:
    size = 1
    for ax in feature_axes:
        size *= x.shape[ax]
    if size != num_features:
        raise ValueError(
            f"{layer}: expected {num_features} features on axes {feature_axes} "
            f"(num_features={num_features}), got inputs of shape {x.shape}."
        )


def _scale_bias(
    module: Module, use_scale: bool, use_bias: bool, shape: tuple[int, ...],
    scale_init: Initializer, bias_init: Initializer, param_dtype: Dtype, rngs: Rngs,
    scale_metadata: tp.Mapping[str, tp.Any], bias_metadata: tp.Mapping[str, tp.Any],
) -> None:
    module.scale = (
        Param(scale_init(rngs.params(), shape, param_dtype), **scale_metadata) if use_scale else None
    )
    module.bias = (
        Param(bias_init(rngs.params(), shape, param_dtype), **bias_metadata) if use_bias else None
    )


def _val(v: Variable | None) -> Array | None:
    return None if v is None else v[...]


# -- BatchNorm ---------------------------------------------------------------------------
class BatchNorm(Module):
    """Normalizes over every axis but `axis`, with running statistics.

    >>> bn = BatchNorm(3, rngs=Rngs(0))
    >>> y = bn(jnp.arange(6.0).reshape(2, 3))          # training: batch stats
    >>> bn.eval(); y = bn(jnp.ones((2, 3)))            # eval: running stats
    """

    def __init__(
        self,
        num_features: int,
        *,
        use_running_average: bool | None = False,
        axis: int = -1,
        momentum: float = 0.99,
        epsilon: float = 1e-5,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Initializer = initializers.zeros_init(),
        scale_init: Initializer = initializers.ones_init(),
        axis_name: str | None = None,
        axis_index_groups: tp.Any = None,
        use_fast_variance: bool = True,
        promote_dtype: PromoteDtypeFn = promote_dtype,
        rngs: Rngs,
        bias_metadata: tp.Mapping[str, tp.Any] = _EMPTY,
        scale_metadata: tp.Mapping[str, tp.Any] = _EMPTY,
    ):
        shape = (num_features,)
        self.mean = BatchStat(jnp.zeros(shape, jnp.float32))
        self.var = BatchStat(jnp.ones(shape, jnp.float32))
        _scale_bias(self, use_scale, use_bias, shape, scale_init, bias_init, param_dtype,
                    rngs, scale_metadata, bias_metadata)
        self.num_features = num_features
        self.use_running_average = use_running_average
        self.axis = axis
        self.momentum = momentum
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.use_bias = use_bias
        self.use_scale = use_scale
        self.bias_init = bias_init
        self.scale_init = scale_init
        self.axis_name = axis_name
        self.axis_index_groups = axis_index_groups
        self.use_fast_variance = use_fast_variance
        self.promote_dtype = promote_dtype

    def __call__(
        self, x: Array, use_running_average: bool | None = None, *, mask: Array | None = None
    ) -> Array:
        x = jnp.asarray(x)
        if use_running_average is None:
            use_running_average = self.use_running_average
        if use_running_average is None:
            raise ValueError(
                "BatchNorm: use_running_average is None. Pass it to the constructor, "
                "to the call (`bn(x, use_running_average=True)`), or use "
                "`model.train()` / `model.eval()`."
            )
        feature_axes = _axes(x.ndim, self.axis, "BatchNorm")
        _check_features("BatchNorm", x, feature_axes, self.num_features)
        reduction_axes = tuple(i for i in range(x.ndim) if i not in feature_axes)
        if use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            mean, var = compute_stats(
                x, reduction_axes, self.dtype, self.axis_name, self.axis_index_groups,
                use_fast_variance=self.use_fast_variance, mask=mask,
            )
            m = self.momentum
            self.mean[...] = m * self.mean[...] + (1 - m) * mean
            self.var[...] = m * self.var[...] + (1 - m) * var
        return normalize(x, mean, var, _val(self.scale), _val(self.bias), reduction_axes,
                         feature_axes, self.dtype, self.epsilon)


# -- LayerNorm / RMSNorm ---------------------------------------------------------------------
class LayerNorm(Module):
    """Normalizes each example over `reduction_axes` (default: the last axis).

    >>> LayerNorm(4, rngs=Rngs(0))(jnp.arange(8.0).reshape(2, 4)).shape
    (2, 4)
    """

    _use_mean = True

    def __init__(
        self,
        num_features: int,
        *,
        epsilon: float = 1e-6,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Initializer = initializers.zeros_init(),
        scale_init: Initializer = initializers.ones_init(),
        reduction_axes: Axes = -1,
        feature_axes: Axes = -1,
        axis_name: str | None = None,
        axis_index_groups: tp.Any = None,
        use_fast_variance: bool = True,
        promote_dtype: PromoteDtypeFn = promote_dtype,
        rngs: Rngs,
        bias_metadata: tp.Mapping[str, tp.Any] = _EMPTY,
        scale_metadata: tp.Mapping[str, tp.Any] = _EMPTY,
    ):
        _scale_bias(self, use_scale, use_bias, (num_features,), scale_init, bias_init,
                    param_dtype, rngs, scale_metadata, bias_metadata)
        self.num_features = num_features
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.use_bias = use_bias
        self.use_scale = use_scale
        self.bias_init = bias_init
        self.scale_init = scale_init
        self.reduction_axes = reduction_axes
        self.feature_axes = feature_axes
        self.axis_name = axis_name
        self.axis_index_groups = axis_index_groups
        self.use_fast_variance = use_fast_variance
        self.promote_dtype = promote_dtype

    def __call__(self, x: Array, *, mask: Array | None = None) -> Array:
        x = jnp.asarray(x)
        name = type(self).__name__
        reduction_axes = _axes(x.ndim, self.reduction_axes, name)
        feature_axes = _axes(x.ndim, self.feature_axes, name)
        _check_features(name, x, feature_axes, self.num_features)
        mean, var = compute_stats(
            x, reduction_axes, self.dtype, self.axis_name, self.axis_index_groups,
            use_mean=self._use_mean, use_fast_variance=self.use_fast_variance, mask=mask,
        )
        return normalize(x, mean, var, _val(self.scale), _val(getattr(self, "bias", None)),
                         reduction_axes, feature_axes, self.dtype, self.epsilon)


class RMSNorm(LayerNorm):
    """`x / sqrt(mean(x**2) + epsilon) * scale` over `reduction_axes` (no bias, no centring).

    >>> RMSNorm(4, rngs=Rngs(0))(jnp.ones((2, 4))).shape
    (2, 4)
    """

    _use_mean = False

    def __init__(
        self,
        num_features: int,
        *,
        epsilon: float = 1e-6,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        use_scale: bool = True,
        scale_init: Initializer = initializers.ones_init(),
        reduction_axes: Axes = -1,
        feature_axes: Axes = -1,
        axis_name: str | None = None,
        axis_index_groups: tp.Any = None,
        use_fast_variance: bool = True,
        promote_dtype: PromoteDtypeFn = promote_dtype,
        rngs: Rngs,
        scale_metadata: tp.Mapping[str, tp.Any] = _EMPTY,
    ):
        super().__init__(
            num_features, epsilon=epsilon, dtype=dtype, param_dtype=param_dtype,
            use_bias=False, use_scale=use_scale, scale_init=scale_init,
            reduction_axes=reduction_axes, feature_axes=feature_axes, axis_name=axis_name,
            axis_index_groups=axis_index_groups, use_fast_variance=use_fast_variance,
            promote_dtype=promote_dtype, rngs=rngs, scale_metadata=scale_metadata,
        )
        del self.bias, self.use_bias, self.bias_init

    def __call__(self, x: Array, mask: Array | None = None) -> Array:
        return super().__call__(x, mask=mask)


# -- GroupNorm / InstanceNorm -------------------------------------------------------------------
class GroupNorm(Module):
    """Normalizes each example over groups of channels (and the spatial axes).

    The leading axis is the batch axis; give exactly one of `num_groups` and
    `group_size` (pass `num_groups=None` to use `group_size`).

    >>> GroupNorm(6, num_groups=3, rngs=Rngs(0))(jnp.ones((2, 5, 6))).shape
    (2, 5, 6)
    """

    def __init__(
        self,
        num_features: int,
        num_groups: int | None = 32,
        group_size: int | None = None,
        *,
        epsilon: float = 1e-6,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Initializer = initializers.zeros_init(),
        scale_init: Initializer = initializers.ones_init(),
        reduction_axes: Axes | None = None,
        axis_name: str | None = None,
        axis_index_groups: tp.Any = None,
        use_fast_variance: bool = True,
        promote_dtype: PromoteDtypeFn = promote_dtype,
        rngs: Rngs,
        bias_metadata: tp.Mapping[str, tp.Any] = _EMPTY,
        scale_metadata: tp.Mapping[str, tp.Any] = _EMPTY,
    ):
        if (num_groups is None) == (group_size is None):
            raise ValueError(
                "GroupNorm: give exactly one of num_groups and group_size, got "
                f"num_groups={num_groups}, group_size={group_size}. To use group_size, "
                "pass num_groups=None (its default is 32)."
            )
        if group_size is not None:
            if group_size <= 0 or num_features % group_size:
                raise ValueError(
                    f"GroupNorm: num_features ({num_features}) is not a multiple of "
                    f"group_size ({group_size})."
                )
            num_groups = num_features // group_size
        assert num_groups is not None
        if num_groups <= 0 or num_features % num_groups:
            raise ValueError(
                f"GroupNorm: num_groups ({num_groups}) does not divide num_features "
                f"({num_features})."
            )
        _scale_bias(self, use_scale, use_bias, (num_features,), scale_init, bias_init,
                    param_dtype, rngs, scale_metadata, bias_metadata)
        self.num_features = num_features
        self.num_groups = num_groups
        self.group_size = num_features // num_groups
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.use_bias = use_bias
        self.use_scale = use_scale
        self.bias_init = bias_init
        self.scale_init = scale_init
        self.reduction_axes = reduction_axes
        self.axis_name = axis_name
        self.axis_index_groups = axis_index_groups
        self.use_fast_variance = use_fast_variance
        self.promote_dtype = promote_dtype

    def __call__(self, x: Array, *, mask: Array | None = None) -> Array:
        x = jnp.asarray(x)
        if x.ndim < 2 or x.shape[-1] != self.num_features:
            raise ValueError(
                f"GroupNorm: expected inputs of shape (batch, ..., {self.num_features}) "
                f"(channels last, num_features={self.num_features}), got shape {x.shape}."
            )
        axes = self.reduction_axes
        axes = _axes(x.ndim, list(range(1, x.ndim - 1)) + [-1] if axes is None else axes, "GroupNorm")
        if x.ndim - 1 not in axes:
            raise ValueError(
                f"GroupNorm: reduction_axes {self.reduction_axes} must include the "
                "last (channel) axis."
            )
        group_shape = x.shape[:-1] + (self.num_groups, self.group_size)
        if mask is not None:
            mask = jnp.reshape(mask, mask.shape[:-1] + (self.num_groups, self.group_size))
        # In the grouped view, the channel axis becomes (group, within-group) and
        # statistics reduce the within-group axis; the group axis is kept.
        mean, var = compute_stats(
            jnp.reshape(x, group_shape), tuple(axes[:-1]) + (x.ndim,), self.dtype,
            self.axis_name, self.axis_index_groups,
            use_fast_variance=self.use_fast_variance, mask=mask,
        )
        mean = jnp.repeat(mean, self.group_size, axis=-1)
        var = jnp.repeat(var, self.group_size, axis=-1)
        return normalize(x, mean, var, _val(self.scale), _val(self.bias), tuple(axes[:-1]),
                         (x.ndim - 1,), self.dtype, self.epsilon)


class InstanceNorm(Module):
    """Normalizes each example and channel over the remaining (spatial) axes.

    The leading axis is the batch axis.

    >>> InstanceNorm(3, rngs=Rngs(0))(jnp.ones((2, 5, 3))).shape
    (2, 5, 3)
    """

    def __init__(
        self,
        num_features: int,
        *,
        epsilon: float = 1e-6,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Initializer = initializers.zeros_init(),
        scale_init: Initializer = initializers.ones_init(),
        feature_axes: Axes = -1,
        axis_name: str | None = None,
        axis_index_groups: tp.Any = None,
        use_fast_variance: bool = True,
        promote_dtype: PromoteDtypeFn = promote_dtype,
        rngs: Rngs,
        bias_metadata: tp.Mapping[str, tp.Any] = _EMPTY,
        scale_metadata: tp.Mapping[str, tp.Any] = _EMPTY,
    ):
        _scale_bias(self, use_scale, use_bias, (num_features,), scale_init, bias_init,
                    param_dtype, rngs, scale_metadata, bias_metadata)
        self.num_features = num_features
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.use_bias = use_bias
        self.use_scale = use_scale
        self.bias_init = bias_init
        self.scale_init = scale_init
        self.feature_axes = feature_axes
        self.axis_name = axis_name
        self.axis_index_groups = axis_index_groups
        self.use_fast_variance = use_fast_variance
        self.promote_dtype = promote_dtype

    def __call__(self, x: Array, *, mask: Array | None = None) -> Array:
        x = jnp.asarray(x)
        feature_axes = _axes(x.ndim, self.feature_axes, "InstanceNorm")
        if 0 in feature_axes:
            raise ValueError(
                f"InstanceNorm: feature_axes {self.feature_axes} include axis 0, which is "
                f"the batch axis (inputs of shape {x.shape})."
            )
        _check_features("InstanceNorm", x, feature_axes, self.num_features)
        reduction_axes = tuple(i for i in range(1, x.ndim) if i not in feature_axes)
        mean, var = compute_stats(
            x, reduction_axes, self.dtype, self.axis_name, self.axis_index_groups,
            use_fast_variance=self.use_fast_variance, mask=mask,
        )
        return normalize(x, mean, var, _val(self.scale), _val(self.bias), reduction_axes,
                         feature_axes, self.dtype, self.epsilon)


# -- weight wrappers ------------------------------------------------------------------------------
from nnxfn.nn.weight_norms import SpectralNorm, WeightNorm  # noqa: E402,F401
