"""Activation functions with Flax NNX-compatible names.

These are the functions from ``jax.nn`` (and ``jnp.tanh``); Flax exposes the
same objects under ``flax.nnx``.  ``PReLU`` lives with the modules.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

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
