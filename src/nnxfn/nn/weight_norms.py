"""Weight wrappers (Flax NNX API): WeightNorm and SpectralNorm rewrite the wrapped
layer's parameters before each call of that layer.

Both are importable from `nnxfn.nn.normalization` too, as in Flax.
"""

from __future__ import annotations

import typing as tp

import jax.numpy as jnp
from jax import lax

from nnxfn.core import Filter, PathContains, iter_graph, to_predicate
from nnxfn.facade.module import Module
from nnxfn.facade.rngs import Rngs
from nnxfn.facade.variables import BatchStat, Param
from nnxfn.nn import initializers
from nnxfn.nn.dtypes import PromoteDtypeFn, promote_dtype
from nnxfn.nn.normalization_ops import result_dtype, sorted_axes
from nnxfn.nn.types import Array, Axes, Dtype, Initializer

Path = tuple[tp.Hashable, ...]
# The wrapped layer, called like the wrapper (`Module` itself declares no `__call__`).
_Layer = tp.Callable[..., Array]


def _l2_normalize(x: Array, axes: tp.Sequence[int] | None, eps: float) -> Array:
    return x * lax.rsqrt(jnp.sum(x * x, axis=axes, keepdims=True) + eps)


def _params(
    layer: Module, predicate: tp.Callable[[Path, Param[Array]], bool] | None = None
) -> list[tuple[Path, Param[Array]]]:
    found = [(p, v) for p, v in iter_graph(layer) if isinstance(v, Param)]
    return [(p, v) for p, v in found if predicate is None or predicate(p, v)]


def _changed(wrapper: str, path: Path) -> RuntimeError:
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

    layer_instance: Module
    feature_axes: Axes
    use_scale: bool
    scale_init: Initializer
    epsilon: float
    dtype: Dtype | None
    param_dtype: Dtype
    variable_filter: Filter
    promote_dtype: PromoteDtypeFn
    scales: dict[Path, Param[Array]] | None

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
        variable_filter: Filter = PathContains("kernel"),
        promote_dtype: PromoteDtypeFn = promote_dtype,
        rngs: Rngs,
    ):
        self.layer_instance = layer_instance
        self.feature_axes = () if feature_axes is None else feature_axes
        self.use_scale = use_scale
        self.scale_init = scale_init
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.variable_filter = variable_filter
        self.promote_dtype = promote_dtype
        self.scales = None
        if use_scale:
            self.scales = {}
            for path, param in _params(layer_instance, to_predicate(variable_filter)):
                axes = sorted_axes(param.ndim, self.feature_axes, "WeightNorm")
                shape = tuple(param.shape[a] for a in axes)
                self.scales[path] = Param(scale_init(rngs.params(), shape, param_dtype))

    def __call__(self, x: Array, *args: object, **kwargs: object) -> Array:
        for path, param in _params(self.layer_instance, to_predicate(self.variable_filter)):
            w = param[...]
            axes = sorted_axes(w.ndim, self.feature_axes, "WeightNorm")
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
        return tp.cast(_Layer, self.layer_instance)(x, *args, **kwargs)


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

    layer_instance: Module
    n_steps: int
    epsilon: float
    dtype: Dtype | None
    param_dtype: Dtype
    error_on_non_matrix: bool
    use_running_average: bool
    batch_stats: dict[Path, BatchStat[Array]]

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
        self.n_steps = n_steps
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.error_on_non_matrix = error_on_non_matrix
        # `use_running_average` is what `train()`/`eval()` flip: eval = no updates.
        self.use_running_average = not update_stats
        self.batch_stats = {}
        for path, param in _params(layer_instance):
            if self._as_matrix(path, param[...]) is None:
                continue
            key = rngs.params()
            u = initializers.normal()(key, (1, param.shape[-1]), param_dtype)
            self.batch_stats[path + ("u",)] = BatchStat(u)
            self.batch_stats[path + ("sigma",)] = BatchStat(jnp.ones((), param_dtype))

    def _as_matrix(self, path: Path, w: Array) -> Array | None:
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
        return tp.cast(_Layer, self.layer_instance)(x)


__all__ = ["SpectralNorm", "WeightNorm"]
