"""Activation functions with Flax NNX-compatible names.

These are the functions from ``jax.nn`` (and ``jnp.tanh``); Flax exposes the
same objects under ``flax.nnx``; ``PReLU`` is the one activation with a
parameter (a Module), here as in Flax.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from nnxfn.facade.module import Module
from nnxfn.facade.variables import Param
from nnxfn.nn.types import EMPTY_METADATA, Array, Dtype, Metadata
from nnxfn.nn.dtypes import PromoteDtypeFn, promote_dtype

celu = jax.nn.celu
elu = jax.nn.elu
gelu = jax.nn.gelu
glu = jax.nn.glu
hard_sigmoid = jax.nn.hard_sigmoid
hard_silu = jax.nn.hard_silu
hard_swish = jax.nn.hard_swish
hard_tanh = jax.nn.hard_tanh
identity = jax.nn.identity
leaky_relu = jax.nn.leaky_relu
log_sigmoid = jax.nn.log_sigmoid
log_softmax = jax.nn.log_softmax
logsumexp = jax.nn.logsumexp
mish = jax.nn.mish
one_hot = jax.nn.one_hot
relu = jax.nn.relu
relu6 = jax.nn.relu6
selu = jax.nn.selu
sigmoid = jax.nn.sigmoid
silu = jax.nn.silu
soft_sign = jax.nn.soft_sign
softmax = jax.nn.softmax
softplus = jax.nn.softplus
standardize = jax.nn.standardize
swish = jax.nn.swish
tanh = jnp.tanh


def normalize(
    x: jax.typing.ArrayLike,
    axis: int | Sequence[int] | None = -1,
    mean: jax.typing.ArrayLike | None = None,
    variance: jax.typing.ArrayLike | None = None,
    epsilon: jax.typing.ArrayLike = 1e-5,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    """Normalize ``x`` to zero mean / unit variance along ``axis``.

    Legacy alias of :func:`standardize` (JAX's former ``jax.nn.normalize``).
    """
    return standardize(x, axis=axis, mean=mean, variance=variance, epsilon=epsilon, where=where)


class PReLU(Module):
    """`x if x >= 0 else negative_slope * x`, with a learnable scalar `negative_slope`.

    >>> PReLU()(jnp.array([-1.0, 2.0]))
    Array([-0.01,  2.  ], dtype=float32)
    """

    def __init__(
        self,
        negative_slope_init: float = 0.01,
        *,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        promote_dtype: PromoteDtypeFn = promote_dtype,
        negative_slope_metadata: Metadata = EMPTY_METADATA,
    ):
        self.negative_slope = Param(
            jnp.asarray(negative_slope_init, dtype=param_dtype), **negative_slope_metadata
        )
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.promote_dtype = promote_dtype

    def __call__(self, inputs: Array) -> Array:
        x, slope = jnp.asarray(inputs), self.negative_slope[...]
        if self.dtype is not None:
            x, slope = self.promote_dtype((x, slope), dtype=self.dtype)
        else:  # as Flax (and Linen): the slope takes the inputs' dtype
            slope = jnp.asarray(slope, x.dtype)
        return jnp.where(x >= 0, x, slope * x)


__all__ = [
    "celu",
    "elu",
    "gelu",
    "glu",
    "hard_sigmoid",
    "hard_silu",
    "hard_swish",
    "hard_tanh",
    "identity",
    "leaky_relu",
    "log_sigmoid",
    "log_softmax",
    "logsumexp",
    "mish",
    "normalize",
    "one_hot",
    "relu",
    "relu6",
    "selu",
    "sigmoid",
    "silu",
    "soft_sign",
    "softmax",
    "softplus",
    "standardize",
    "swish",
    "tanh",
]
