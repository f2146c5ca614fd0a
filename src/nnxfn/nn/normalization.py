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

from nnxfn.core import PathContains, iter_graph, to_predicate
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


def result_dtype(*args: Array | None, dtype: Dtype | None = None) -> Dtype:
    """`dtype` if given, else the common dtype of `args`, at least float32 if not inexact."""
    if dtype is not None:
        return dtype
    dtype = jnp.result_type(*[a for a in args if a is not None])
    return dtype if jnp.issubdtype(dtype, jnp.inexact) else jnp.promote_types(jnp.float32, dtype)


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
    return jnp.asarray(y, result_dtype(*args, dtype=dtype))


def _check_features(
    layer: str, x: Array, feature_axes: tuple[int, ...], num_features: int, *params: tp.Any
) -> None:
    """Inputs must carry `num_features` on `feature_axes` (checked when there are params)."""
    if params and all(p is None for p in params):
        return
    size = 1
    for ax in feature_axes:
        size *= x.shape[ax]
    if size != num_features:
        raise ValueError(
            f"{layer}: expected {num_features} features on axes {feature_axes} "
            f"(num_features={num_features}), got inputs of shape {x.shape}."
        )


def _scale_bias(
    module: Module,
    use_scale: bool,
    use_bias: bool,
    shape: tuple[int, ...],
    scale_init: Initializer,
    bias_init: Initializer,
    param_dtype: Dtype,
    rngs: Rngs,
    scale_metadata: tp.Mapping[str, tp.Any],
    bias_metadata: tp.Mapping[str, tp.Any],
) -> None:
    module.scale = (
        Param(scale_init(rngs.params(), shape, param_dtype), **scale_metadata) if use_scale else None
    )
    module.bias = Param(bias_init(rngs.params(), shape, param_dtype), **bias_metadata) if use_bias else None


def _val(v: Variable | None) -> Array | None:
    return None if v is None else v[...]


def _keep(module: Module, **attributes: tp.Any) -> None:
    """Store the constructor's configuration as attributes (as Flax does)."""
    for name, value in attributes.items():
        setattr(module, name, value)


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
        _scale_bias(
            self,
            use_scale,
            use_bias,
            shape,
            scale_init,
            bias_init,
            param_dtype,
            rngs,
            scale_metadata,
            bias_metadata,
        )
        _keep(
            self,
            num_features=num_features,
            use_running_average=use_running_average,
            axis=axis,
            momentum=momentum,
            epsilon=epsilon,
            dtype=dtype,
            param_dtype=param_dtype,
            use_bias=use_bias,
            use_scale=use_scale,
            axis_name=axis_name,
            axis_index_groups=axis_index_groups,
            use_fast_variance=use_fast_variance,
            promote_dtype=promote_dtype,
        )

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
        feature_axes = _axes(x.ndim, self.axis, "BatchNorm")
        _check_features("BatchNorm", x, feature_axes, self.num_features)
        reduction_axes = tuple(i for i in range(x.ndim) if i not in feature_axes)
        if use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            mean, var = compute_stats(
                x,
                reduction_axes,
                self.dtype,
                self.axis_name,
                self.axis_index_groups,
                use_fast_variance=self.use_fast_variance,
                mask=mask,
            )
            m = self.momentum
            self.mean[...] = m * self.mean[...] + (1 - m) * mean
            self.var[...] = m * self.var[...] + (1 - m) * var
        return normalize(
            x,
            mean,
            var,
            _val(self.scale),
            _val(self.bias),
            reduction_axes,
            feature_axes,
            self.dtype,
            self.epsilon,
        )


# -- LayerNorm / RMSNorm ---------------------------------------------------------------------
class _AxesNorm(Module):
    """Shared call of LayerNorm and RMSNorm: statistics over `reduction_axes`."""

    _use_mean = True

    def __call__(self, x: Array, *, mask: Array | None = None) -> Array:
        x = jnp.asarray(x)
        name = type(self).__name__
        reduction_axes = _axes(x.ndim, self.reduction_axes, name)
        feature_axes = _axes(x.ndim, self.feature_axes, name)
        _check_features(name, x, feature_axes, self.num_features, self.scale, getattr(self, "bias", None))
        mean, var = compute_stats(
            x,
            reduction_axes,
            self.dtype,
            self.axis_name,
            self.axis_index_groups,
            use_mean=self._use_mean,
            use_fast_variance=self.use_fast_variance,
            mask=mask,
        )
        return normalize(
            x,
            mean,
            var,
            _val(self.scale),
            _val(getattr(self, "bias", None)),
            reduction_axes,
            feature_axes,
            self.dtype,
            self.epsilon,
        )


class LayerNorm(_AxesNorm):
    """Normalizes each example over `reduction_axes` (default: the last axis).

    >>> LayerNorm(4, rngs=Rngs(0))(jnp.arange(8.0).reshape(2, 4)).shape
    (2, 4)
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
        _scale_bias(
            self,
            use_scale,
            use_bias,
            (num_features,),
            scale_init,
            bias_init,
            param_dtype,
            rngs,
            scale_metadata,
            bias_metadata,
        )
        _keep(
            self,
            num_features=num_features,
            epsilon=epsilon,
            dtype=dtype,
            param_dtype=param_dtype,
            use_bias=use_bias,
            use_scale=use_scale,
            reduction_axes=reduction_axes,
            feature_axes=feature_axes,
            axis_name=axis_name,
            axis_index_groups=axis_index_groups,
            use_fast_variance=use_fast_variance,
            promote_dtype=promote_dtype,
        )


class RMSNorm(_AxesNorm):
    """`x / sqrt(mean(x**2) + epsilon) * scale` over `reduction_axes` (no centring, no bias).

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
        self.scale = (
            Param(scale_init(rngs.params(), (num_features,), param_dtype), **scale_metadata)
            if use_scale
            else None
        )
        _keep(
            self,
            num_features=num_features,
            epsilon=epsilon,
            dtype=dtype,
            param_dtype=param_dtype,
            use_scale=use_scale,
            reduction_axes=reduction_axes,
            feature_axes=feature_axes,
            axis_name=axis_name,
            axis_index_groups=axis_index_groups,
            use_fast_variance=use_fast_variance,
            promote_dtype=promote_dtype,
        )

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
                f"GroupNorm: num_groups ({num_groups}) does not divide num_features ({num_features})."
            )
        _scale_bias(
            self,
            use_scale,
            use_bias,
            (num_features,),
            scale_init,
            bias_init,
            param_dtype,
            rngs,
            scale_metadata,
            bias_metadata,
        )
        self.num_features = num_features
        self.num_groups = num_groups
        self.group_size = num_features // num_groups
        self.feature_axis = -1  # the channel axis: always the last one (as in Flax)
        _keep(
            self,
            epsilon=epsilon,
            dtype=dtype,
            param_dtype=param_dtype,
            use_bias=use_bias,
            use_scale=use_scale,
            reduction_axes=reduction_axes,
            axis_name=axis_name,
            axis_index_groups=axis_index_groups,
            use_fast_variance=use_fast_variance,
            promote_dtype=promote_dtype,
        )

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
                f"GroupNorm: reduction_axes {self.reduction_axes} must include the last (channel) axis."
            )
        group_shape = x.shape[:-1] + (self.num_groups, self.group_size)
        if mask is not None:
            mask = jnp.reshape(mask, mask.shape[:-1] + (self.num_groups, self.group_size))
        # In the grouped view, the channel axis becomes (group, within-group) and
        # statistics reduce the within-group axis; the group axis is kept.
        mean, var = compute_stats(
            jnp.reshape(x, group_shape),
            tuple(axes[:-1]) + (x.ndim,),
            self.dtype,
            self.axis_name,
            self.axis_index_groups,
            use_fast_variance=self.use_fast_variance,
            mask=mask,
        )
        mean = jnp.repeat(mean, self.group_size, axis=-1)
        var = jnp.repeat(var, self.group_size, axis=-1)
        return normalize(
            x,
            mean,
            var,
            _val(self.scale),
            _val(self.bias),
            tuple(axes[:-1]),
            (x.ndim - 1,),
            self.dtype,
            self.epsilon,
        )


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
        _scale_bias(
            self,
            use_scale,
            use_bias,
            (num_features,),
            scale_init,
            bias_init,
            param_dtype,
            rngs,
            scale_metadata,
            bias_metadata,
        )
        _keep(
            self,
            num_features=num_features,
            epsilon=epsilon,
            dtype=dtype,
            param_dtype=param_dtype,
            use_bias=use_bias,
            use_scale=use_scale,
            feature_axes=feature_axes,
            axis_name=axis_name,
            axis_index_groups=axis_index_groups,
            use_fast_variance=use_fast_variance,
            promote_dtype=promote_dtype,
        )

    def __call__(self, x: Array, *, mask: Array | None = None) -> Array:
        x = jnp.asarray(x)
        feature_axes = _axes(x.ndim, self.feature_axes, "InstanceNorm")
        if 0 in feature_axes:
            raise ValueError(
                f"InstanceNorm: feature_axes {self.feature_axes} include axis 0, which is "
                f"the batch axis (inputs of shape {x.shape})."
            )
        _check_features("InstanceNorm", x, feature_axes, self.num_features, self.scale, self.bias)
        reduction_axes = tuple(i for i in range(1, x.ndim) if i not in feature_axes)
        mean, var = compute_stats(
            x,
            reduction_axes,
            self.dtype,
            self.axis_name,
            self.axis_index_groups,
            use_fast_variance=self.use_fast_variance,
            mask=mask,
        )
        return normalize(
            x,
            mean,
            var,
            _val(self.scale),
            _val(self.bias),
            reduction_axes,
            feature_axes,
            self.dtype,
            self.epsilon,
        )


# -- weight wrappers --------------------------------------------------------------------------------
def _l2_normalize(x: Array, axes: tp.Sequence[int] | None, eps: float) -> Array:
    return x * lax.rsqrt(jnp.sum(x * x, axis=axes, keepdims=True) + eps)


def _params(layer: Module, predicate: tp.Callable | None = None) -> list[tuple[tuple, Param]]:
    found = [(p, v) for p, v in iter_graph(layer) if isinstance(v, Param)]
    return [(p, v) for p, v in found if predicate is None or predicate(p, v)]


def _changed(wrapper: str, path: tuple) -> RuntimeError:
    return RuntimeError(
        f"{wrapper}: the wrapped layer has a parameter at {path} that did not exist "
        f"when the {wrapper} was built. Wrap the layer after its parameters are final."
    )


class WeightNorm(Module):
    """Reparametrizes the wrapped layer's selected parameters as
    `scale * w / ||w||` (norm over all axes but `feature_axes`) before each call.

    The normalized value is written into the layer's parameter, as Flax does;
    `scales` maps each selected parameter's path to its learnable `Param`.

    >>> from nnxfn.nn.linear import Linear
    >>> wn = WeightNorm(Linear(3, 4, rngs=Rngs(0)), rngs=Rngs(1))
    >>> wn(jnp.ones((2, 3))).shape
    (2, 4)
    """

    def __init__(
        self,
        layer_instance: Module,
        *,
        feature_axes: Axes | None = -1,
        use_scale: bool = True,
        scale_init: Initializer = initializers.ones_init(),
        epsilon: float = 1e-12,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        variable_filter: tp.Any = PathContains("kernel"),
        promote_dtype: PromoteDtypeFn = promote_dtype,
        rngs: Rngs,
    ):
        self.layer_instance = layer_instance
        _keep(
            self,
            feature_axes=() if feature_axes is None else feature_axes,
            use_scale=use_scale,
            scale_init=scale_init,
            epsilon=epsilon,
            dtype=dtype,
            param_dtype=param_dtype,
            variable_filter=variable_filter,
            promote_dtype=promote_dtype,
        )
        self.scales: dict[tuple, Param] | None = None
        if use_scale:
            self.scales = {}
            for path, param in _params(layer_instance, to_predicate(variable_filter)):
                axes = _axes(param.ndim, self.feature_axes, "WeightNorm")
                shape = tuple(param.shape[a] for a in axes)
                self.scales[path] = Param(scale_init(rngs.params(), shape, param_dtype))

    def __call__(self, x: Array, *args: tp.Any, **kwargs: tp.Any) -> Array:
        for path, param in _params(self.layer_instance, to_predicate(self.variable_filter)):
            w = param[...]
            axes = _axes(w.ndim, self.feature_axes, "WeightNorm")
            reduce = tuple(i for i in range(w.ndim) if i not in axes)
            w_bar = _l2_normalize(w, reduce, self.epsilon)
            scale = None
            if self.scales is not None:
                if path not in self.scales:
                    raise _changed("WeightNorm", path)
                shape = [w.shape[i] if i in axes else 1 for i in range(w.ndim)]
                scale = jnp.reshape(self.scales[path][...], shape)
                w_bar = w_bar * scale
            param[...] = jnp.asarray(w_bar, result_dtype(w, scale, dtype=self.dtype))
        return self.layer_instance(x, *args, **kwargs)


class SpectralNorm(Module):
    """Divides the wrapped layer's parameters (2-D or more) by their largest
    singular value, estimated by `n_steps` of power iteration, before each call.

    `batch_stats[path + ('u',)]` (the power-iteration vector) and
    `batch_stats[path + ('sigma',)]` are `BatchStat`s, updated when
    `update_stats` (training; `model.eval()` turns it off).

    >>> from nnxfn.nn.linear import Linear
    >>> sn = SpectralNorm(Linear(3, 4, rngs=Rngs(0)), rngs=Rngs(1))
    >>> sn(jnp.ones((2, 3)), update_stats=False).shape
    (2, 4)
    """

    def __init__(
        self,
        layer_instance: Module,
        *,
        n_steps: int = 1,
        epsilon: float = 1e-12,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        error_on_non_matrix: bool = False,
        update_stats: bool = True,
        rngs: Rngs,
    ):
        self.layer_instance = layer_instance
        _keep(
            self,
            n_steps=n_steps,
            epsilon=epsilon,
            dtype=dtype,
            param_dtype=param_dtype,
            error_on_non_matrix=error_on_non_matrix,
        )
        # `use_running_average` is what `train()`/`eval()` flip: eval = no updates.
        self.use_running_average = not update_stats
        self.batch_stats: dict[tuple, BatchStat] = {}
        for path, param in _params(layer_instance):
            if self._as_matrix(path, param[...]) is None:
                continue
            key = rngs.params()
            u = initializers.normal()(key, (1, param.shape[-1]), param_dtype)
            self.batch_stats[path + ("u",)] = BatchStat(u)
            self.batch_stats[path + ("sigma",)] = BatchStat(jnp.ones((), param_dtype))

    def _as_matrix(self, path: tuple, w: Array) -> Array | None:
        if w.ndim <= 1 or self.n_steps < 1:
            return None
        if w.ndim > 2 and self.error_on_non_matrix:
            raise ValueError(
                f"SpectralNorm: parameter {path} has shape {w.shape} ({w.ndim}-D) but "
                "error_on_non_matrix=True; only 2-D parameters are accepted."
            )
        return jnp.reshape(w, (-1, w.shape[-1]))

    def __call__(self, x: Array, update_stats: bool | None = None) -> Array:
        if update_stats is None:
            update_stats = not self.use_running_average
        for path, param in _params(self.layer_instance):
            w = self._as_matrix(path, param[...])
            if w is None:
                continue
            if path + ("u",) not in self.batch_stats:
                raise _changed("SpectralNorm", path)
            u = self.batch_stats[path + ("u",)][...]
            for _ in range(self.n_steps):
                v = _l2_normalize(u @ w.T, None, self.epsilon)
                u = _l2_normalize(v @ w, None, self.epsilon)
            u, v = lax.stop_gradient(u), lax.stop_gradient(v)
            sigma = (v @ w @ u.T)[0, 0]
            w_bar = jnp.reshape(w / jnp.where(sigma != 0, sigma, 1), param.shape)
            if update_stats:
                self.batch_stats[path + ("u",)][...] = u
                self.batch_stats[path + ("sigma",)][...] = sigma
            param[...] = jnp.asarray(w_bar, result_dtype(w_bar, u, v, sigma, dtype=self.dtype))
        return self.layer_instance(x)
