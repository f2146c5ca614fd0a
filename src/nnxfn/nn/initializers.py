"""Parameter initializers with Flax NNX-compatible names, signatures and defaults.

Every initializer is a callable ``init(key, shape, dtype=jnp.float_) -> Array``;
the builders below (``normal``, ``variance_scaling``, ...) return such callables.
The implementations are JAX's own ``jax.nn.initializers`` (a runtime dependency),
whose defaults coincide with Flax's: ``normal(stddev=1e-2)``,
``uniform(scale=1e-2)``, ``truncated_normal(stddev=1e-2, lower=-2., upper=2.)``,
fan axes ``in_axis=-2, out_axis=-1``.  ``orthogonal``/``delta_orthogonal``
are thin wrappers that additionally support 16-bit float dtypes on CPU.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.nn.initializers as _jinit
import jax.numpy as jnp

#: Protocol type of an initializer: ``(key, shape, dtype=...) -> Array``.
Initializer = _jinit.Initializer

# Plain initializers (callable directly as ``init(key, shape, dtype)``).
zeros = _jinit.zeros
ones = _jinit.ones

# Initializer builders.
constant = _jinit.constant
normal = _jinit.normal
uniform = _jinit.uniform
truncated_normal = _jinit.truncated_normal
variance_scaling = _jinit.variance_scaling
lecun_normal = _jinit.lecun_normal
lecun_uniform = _jinit.lecun_uniform
he_normal = _jinit.he_normal
he_uniform = _jinit.he_uniform
kaiming_normal = _jinit.kaiming_normal
kaiming_uniform = _jinit.kaiming_uniform
glorot_normal = _jinit.glorot_normal
glorot_uniform = _jinit.glorot_uniform
xavier_normal = _jinit.xavier_normal
xavier_uniform = _jinit.xavier_uniform


def _qr_safe(builder: Any, scale: Any, column_axis: int, dtype: Any) -> Initializer:
    """Wrap a QR-based JAX initializer so 16-bit dtypes work on every backend.

    LAPACK has no bfloat16/float16 QR, so those dtypes are sampled in float32
    and cast; other dtypes go straight to JAX.
    """

    def init(key: jax.Array, shape: Any, dtype: Any = dtype) -> jax.Array:
        if (
            dtype is not None
            and jnp.issubdtype(dtype, jnp.floating)
            and jnp.dtype(dtype).itemsize < 4
        ):
            out = builder(scale, column_axis, jnp.float32)(key, shape, jnp.float32)
            return out.astype(dtype)
        return builder(scale, column_axis, dtype)(key, shape, dtype)

    return init


def orthogonal(scale: Any = 1.0, column_axis: int = -1, dtype: Any = None) -> Initializer:
    """Orthogonal initializer: the matrix obtained by flattening all axes but
    ``column_axis`` has orthonormal rows or columns, times ``scale``."""
    return _qr_safe(_jinit.orthogonal, scale, column_axis, dtype)


def delta_orthogonal(
    scale: Any = 1.0, column_axis: int = -1, dtype: Any = None
) -> Initializer:
    """Delta-orthogonal conv kernel initializer (3-5 D kernels): an orthogonal
    matrix at the spatial centre and zeros elsewhere."""
    return _qr_safe(_jinit.delta_orthogonal, scale, column_axis, dtype)


def zeros_init() -> Initializer:
    """Return an initializer that fills arrays with zeros (``zeros`` itself)."""
    return zeros


def ones_init() -> Initializer:
    """Return an initializer that fills arrays with ones (``ones`` itself)."""
    return ones


__all__ = [
    'Initializer',
    'constant',
    'delta_orthogonal',
    'glorot_normal',
    'glorot_uniform',
    'he_normal',
    'he_uniform',
    'kaiming_normal',
    'kaiming_uniform',
    'lecun_normal',
    'lecun_uniform',
    'normal',
    'ones',
    'ones_init',
    'orthogonal',
    'truncated_normal',
    'uniform',
    'variance_scaling',
    'xavier_normal',
    'xavier_uniform',
    'zeros',
    'zeros_init',
]
