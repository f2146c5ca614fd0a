"""Normalization layers (Flax NNX API): BatchNorm, LayerNorm, RMSNorm,
GroupNorm, InstanceNorm; the weight wrappers WeightNorm and SpectralNorm
(defined in `weight_norms.py`) are importable from here too.

Statistics are computed in at least float32 (see `normalization_ops.py`).
`scale`/`bias` are `Param`s of shape `(num_features,)`; BatchNorm's running
`mean`/`var` are `BatchStat`s, updated in training mode as
`ra = momentum * ra + (1 - momentum) * batch`.
"""

from __future__ import annotations

import jax.numpy as jnp

from nnxfn.facade.module import Module
from nnxfn.facade.rngs import Rngs
from nnxfn.facade.variables import BatchStat, Param
from nnxfn.nn import initializers
from nnxfn.nn.dtypes import PromoteDtypeFn, promote_dtype
from nnxfn.nn.normalization_ops import (
    check_features,
    compute_stats as compute_stats,
    apply_normalization as apply_normalization,
    result_dtype as result_dtype,
    sorted_axes,
)
from nnxfn.nn.types import (
    EMPTY_METADATA,
    Array,
    Axes,
    AxisIndexGroups,
    Dtype,
    Initializer,
    Metadata,
)
from nnxfn.nn.weight_norms import SpectralNorm as SpectralNorm, WeightNorm as WeightNorm


def _param(
    use: bool, init: Initializer, rngs: Rngs, shape: tuple[int, ...], dtype: Dtype, metadata: Metadata
) -> Param[Array] | None:
    return Param(init(rngs.params(), shape, dtype), **metadata) if use else None


def _value(param: Param[Array] | None) -> Array | None:
    return None if param is None else param[...]


class _Norm(Module):
    """What every layer here keeps (Flax's attribute names) and the two steps of
    its call: statistics over some axes, then the normalization."""

    num_features: int
    epsilon: float
    dtype: Dtype | None
    param_dtype: Dtype
    use_scale: bool
    scale: Param[Array] | None
    axis_name: str | None
    axis_index_groups: AxisIndexGroups
    use_fast_variance: bool
    promote_dtype: PromoteDtypeFn

    def __init__(
        self,
        num_features: int,
        *,
        epsilon: float,
        dtype: Dtype | None,
        param_dtype: Dtype,
        use_scale: bool,
        scale_init: Initializer,
        scale_metadata: Metadata,
        axis_name: str | None,
        axis_index_groups: AxisIndexGroups,
        use_fast_variance: bool,
        promote_dtype: PromoteDtypeFn,
        rngs: Rngs,
    ):
        self.scale = _param(use_scale, scale_init, rngs, (num_features,), param_dtype, scale_metadata)
        self.num_features = num_features
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.use_scale = use_scale
        self.axis_name = axis_name
        self.axis_index_groups = axis_index_groups
        self.use_fast_variance = use_fast_variance
        self.promote_dtype = promote_dtype

    def _stats(
        self, x: Array, axes: tuple[int, ...], mask: Array | None, use_mean: bool = True
    ) -> tuple[Array, Array]:
        return compute_stats(
            x,
            axes,
            self.dtype,
            self.axis_name,
            self.axis_index_groups,
            use_mean=use_mean,
            use_fast_variance=self.use_fast_variance,
            mask=mask,
        )

    def _normalize(
        self,
        x: Array,
        mean: Array,
        var: Array,
        bias: Param[Array] | None,
        reduction_axes: tuple[int, ...],
        feature_axes: tuple[int, ...],
    ) -> Array:
        return apply_normalization(
            x,
            mean,
            var,
            _value(self.scale),
            _value(bias),
            reduction_axes,
            feature_axes,
            self.dtype,
            self.epsilon,
        )


# -- BatchNorm ---------------------------------------------------------------------------
class BatchNorm(_Norm):
    """Normalizes over every axis but `axis`, with running statistics.

    >>> bn = BatchNorm(3, rngs=Rngs(0))
    >>> y = bn(jnp.arange(6.0).reshape(2, 3))          # training: batch stats
    >>> bn.eval(); y = bn(jnp.ones((2, 3)))            # eval: running stats
    """

    mean: BatchStat[Array]
    var: BatchStat[Array]
    bias: Param[Array] | None
    use_bias: bool
    use_running_average: bool | None
    axis: int
    momentum: float

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
        axis_index_groups: AxisIndexGroups = None,
        use_fast_variance: bool = True,
        promote_dtype: PromoteDtypeFn = promote_dtype,
        rngs: Rngs,
        bias_metadata: Metadata = EMPTY_METADATA,
        scale_metadata: Metadata = EMPTY_METADATA,
    ):
        shape = (num_features,)
        self.mean = BatchStat(jnp.zeros(shape, jnp.float32))
        self.var = BatchStat(jnp.ones(shape, jnp.float32))
        super().__init__(
            num_features,
            epsilon=epsilon,
            dtype=dtype,
            param_dtype=param_dtype,
            use_scale=use_scale,
            scale_init=scale_init,
            scale_metadata=scale_metadata,
            axis_name=axis_name,
            axis_index_groups=axis_index_groups,
            use_fast_variance=use_fast_variance,
            promote_dtype=promote_dtype,
            rngs=rngs,
        )
        self.bias = _param(use_bias, bias_init, rngs, shape, param_dtype, bias_metadata)  # after scale
        self.use_bias = use_bias
        self.use_running_average = use_running_average
        self.axis = axis
        self.momentum = momentum

    def set_view(self, use_running_average: bool | None = None) -> None:
        """Used by `nnx.view` (and listed by `nnx.view_info`).

        Args:
          use_running_average: if True, normalize with the stored running statistics
            instead of the batch statistics.
        """
        if use_running_average is not None:
            self.use_running_average = use_running_average

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
        feature_axes = sorted_axes(x.ndim, self.axis, "BatchNorm")
        check_features("BatchNorm", x, feature_axes, self.num_features)
        reduction_axes = tuple(i for i in range(x.ndim) if i not in feature_axes)
        if use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            mean, var = self._stats(x, reduction_axes, mask)
            m = self.momentum
            self.mean[...] = m * self.mean[...] + (1 - m) * mean
            self.var[...] = m * self.var[...] + (1 - m) * var
        return self._normalize(x, mean, var, self.bias, reduction_axes, feature_axes)


# -- InstanceNorm / LayerNorm / RMSNorm ---------------------------------------------------
class _FeatureNorm(_Norm):
    """The constructor and call of InstanceNorm and LayerNorm: a scale and a bias
    over `feature_axes`; subclasses say which axes the statistics reduce."""

    bias: Param[Array] | None
    use_bias: bool
    feature_axes: Axes

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
        axis_index_groups: AxisIndexGroups = None,
        use_fast_variance: bool = True,
        promote_dtype: PromoteDtypeFn = promote_dtype,
        rngs: Rngs,
        bias_metadata: Metadata = EMPTY_METADATA,
        scale_metadata: Metadata = EMPTY_METADATA,
    ):
        super().__init__(
            num_features,
            epsilon=epsilon,
            dtype=dtype,
            param_dtype=param_dtype,
            use_scale=use_scale,
            scale_init=scale_init,
            scale_metadata=scale_metadata,
            axis_name=axis_name,
            axis_index_groups=axis_index_groups,
            use_fast_variance=use_fast_variance,
            promote_dtype=promote_dtype,
            rngs=rngs,
        )
        self.bias = _param(use_bias, bias_init, rngs, (num_features,), param_dtype, bias_metadata)
        self.use_bias = use_bias
        self.feature_axes = feature_axes

    def _axes(self, x: Array) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(reduction axes, feature axes) for inputs `x`."""
        raise NotImplementedError

    def __call__(self, x: Array, *, mask: Array | None = None) -> Array:
        x = jnp.asarray(x)
        reduction_axes, feature_axes = self._axes(x)
        if self.scale is not None or self.bias is not None:
            check_features(type(self).__name__, x, feature_axes, self.num_features)
        mean, var = self._stats(x, reduction_axes, mask)
        return self._normalize(x, mean, var, self.bias, reduction_axes, feature_axes)


def _given_axes(
    x: Array, reduction_axes: Axes, feature_axes: Axes, layer: str
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return sorted_axes(x.ndim, reduction_axes, layer), sorted_axes(x.ndim, feature_axes, layer)


class InstanceNorm(_FeatureNorm):
    """Normalizes each example and channel over the remaining (spatial) axes.

    The leading axis is the batch axis.

    >>> InstanceNorm(3, rngs=Rngs(0))(jnp.ones((2, 5, 3))).shape
    (2, 5, 3)
    """

    def _axes(self, x: Array) -> tuple[tuple[int, ...], tuple[int, ...]]:
        feature_axes = sorted_axes(x.ndim, self.feature_axes, "InstanceNorm")
        if 0 in feature_axes:
            raise ValueError(
                f"InstanceNorm: feature_axes {self.feature_axes} include axis 0, which is "
                f"the batch axis (inputs of shape {x.shape})."
            )
        return tuple(i for i in range(1, x.ndim) if i not in feature_axes), feature_axes


class LayerNorm(_FeatureNorm):
    """Normalizes each example over `reduction_axes` (default: the last axis).

    >>> LayerNorm(4, rngs=Rngs(0))(jnp.arange(8.0).reshape(2, 4)).shape
    (2, 4)
    """

    reduction_axes: Axes

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
        axis_index_groups: AxisIndexGroups = None,
        use_fast_variance: bool = True,
        promote_dtype: PromoteDtypeFn = promote_dtype,
        rngs: Rngs,
        bias_metadata: Metadata = EMPTY_METADATA,
        scale_metadata: Metadata = EMPTY_METADATA,
    ):
        super().__init__(
            num_features,
            epsilon=epsilon,
            dtype=dtype,
            param_dtype=param_dtype,
            use_bias=use_bias,
            use_scale=use_scale,
            bias_init=bias_init,
            scale_init=scale_init,
            feature_axes=feature_axes,
            axis_name=axis_name,
            axis_index_groups=axis_index_groups,
            use_fast_variance=use_fast_variance,
            promote_dtype=promote_dtype,
            rngs=rngs,
            bias_metadata=bias_metadata,
            scale_metadata=scale_metadata,
        )
        self.reduction_axes = reduction_axes

    def _axes(self, x: Array) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return _given_axes(x, self.reduction_axes, self.feature_axes, "LayerNorm")


class RMSNorm(_Norm):
    """`x / sqrt(mean(x**2) + epsilon) * scale` over `reduction_axes` (no centring, no bias).

    >>> RMSNorm(4, rngs=Rngs(0))(jnp.ones((2, 4))).shape
    (2, 4)
    """

    reduction_axes: Axes
    feature_axes: Axes

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
        axis_index_groups: AxisIndexGroups = None,
        use_fast_variance: bool = True,
        promote_dtype: PromoteDtypeFn = promote_dtype,
        rngs: Rngs,
        scale_metadata: Metadata = EMPTY_METADATA,
    ):
        super().__init__(
            num_features,
            epsilon=epsilon,
            dtype=dtype,
            param_dtype=param_dtype,
            use_scale=use_scale,
            scale_init=scale_init,
            scale_metadata=scale_metadata,
            axis_name=axis_name,
            axis_index_groups=axis_index_groups,
            use_fast_variance=use_fast_variance,
            promote_dtype=promote_dtype,
            rngs=rngs,
        )
        self.reduction_axes = reduction_axes
        self.feature_axes = feature_axes

    def __call__(self, x: Array, mask: Array | None = None) -> Array:
        x = jnp.asarray(x)
        reduction_axes, feature_axes = _given_axes(x, self.reduction_axes, self.feature_axes, "RMSNorm")
        if self.scale is not None:
            check_features("RMSNorm", x, feature_axes, self.num_features)
        mean, var = self._stats(x, reduction_axes, mask, use_mean=False)
        return self._normalize(x, mean, var, None, reduction_axes, feature_axes)


# -- GroupNorm ---------------------------------------------------------------------------------
class GroupNorm(_Norm):
    """Normalizes each example over groups of channels (and the spatial axes).

    The leading axis is the batch axis; give exactly one of `num_groups` and
    `group_size` (pass `num_groups=None` to use `group_size`).

    >>> GroupNorm(6, num_groups=3, rngs=Rngs(0))(jnp.ones((2, 5, 6))).shape
    (2, 5, 6)
    """

    bias: Param[Array] | None
    use_bias: bool
    num_groups: int
    group_size: int
    feature_axis: int
    reduction_axes: Axes | None

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
        axis_index_groups: AxisIndexGroups = None,
        use_fast_variance: bool = True,
        promote_dtype: PromoteDtypeFn = promote_dtype,
        rngs: Rngs,
        bias_metadata: Metadata = EMPTY_METADATA,
        scale_metadata: Metadata = EMPTY_METADATA,
    ):
        self.num_groups = _num_groups(num_features, num_groups, group_size)
        self.group_size = num_features // self.num_groups
        self.feature_axis = -1  # the channel axis: always the last one (as in Flax)
        super().__init__(
            num_features,
            epsilon=epsilon,
            dtype=dtype,
            param_dtype=param_dtype,
            use_scale=use_scale,
            scale_init=scale_init,
            scale_metadata=scale_metadata,
            axis_name=axis_name,
            axis_index_groups=axis_index_groups,
            use_fast_variance=use_fast_variance,
            promote_dtype=promote_dtype,
            rngs=rngs,
        )
        self.bias = _param(use_bias, bias_init, rngs, (num_features,), param_dtype, bias_metadata)
        self.use_bias = use_bias
        self.reduction_axes = reduction_axes

    def __call__(self, x: Array, *, mask: Array | None = None) -> Array:
        x = jnp.asarray(x)
        if x.ndim < 2 or x.shape[-1] != self.num_features:
            raise ValueError(
                f"GroupNorm: expected inputs of shape (batch, ..., {self.num_features}) "
                f"(channels last, num_features={self.num_features}), got shape {x.shape}."
            )
        given = self.reduction_axes
        axes = sorted_axes(x.ndim, [*range(1, x.ndim - 1), -1] if given is None else given, "GroupNorm")
        if x.ndim - 1 not in axes:
            raise ValueError(
                f"GroupNorm: reduction_axes {self.reduction_axes} must include the last (channel) axis."
            )
        group_shape = x.shape[:-1] + (self.num_groups, self.group_size)
        if mask is not None:
            mask = jnp.reshape(mask, mask.shape[:-1] + (self.num_groups, self.group_size))
        # In the grouped view, the channel axis becomes (group, within-group) and
        # statistics reduce the within-group axis; the group axis is kept.
        mean, var = self._stats(jnp.reshape(x, group_shape), axes[:-1] + (x.ndim,), mask)
        mean = jnp.repeat(mean, self.group_size, axis=-1)
        var = jnp.repeat(var, self.group_size, axis=-1)
        return self._normalize(x, mean, var, self.bias, axes[:-1], (x.ndim - 1,))


def _num_groups(num_features: int, num_groups: int | None, group_size: int | None) -> int:
    if (num_groups is None) == (group_size is None):
        raise ValueError(
            "GroupNorm: give exactly one of num_groups and group_size, got "
            f"num_groups={num_groups}, group_size={group_size}. To use group_size, "
            "pass num_groups=None (its default is 32)."
        )
    if group_size is not None:
        if group_size <= 0 or num_features % group_size:
            raise ValueError(
                f"GroupNorm: num_features ({num_features}) is not a multiple of group_size ({group_size})."
            )
        num_groups = num_features // group_size
    assert num_groups is not None
    if num_groups <= 0 or num_features % num_groups:
        raise ValueError(
            f"GroupNorm: num_groups ({num_groups}) does not divide num_features ({num_features})."
        )
    return num_groups


__all__ = [
    "BatchNorm",
    "GroupNorm",
    "InstanceNorm",
    "LayerNorm",
    "RMSNorm",
    "SpectralNorm",
    "WeightNorm",
    "compute_stats",
    "apply_normalization",
    "result_dtype",
]
