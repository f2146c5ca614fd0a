"""Value tests for nnxfn.nn.activations against numpy formulas."""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnxfn.nn import activations as act

X = np.linspace(-6.0, 6.0, 241, dtype=np.float32)
_erf = np.vectorize(math.erf)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically plain logistic function."""
    return 1.0 / (1.0 + np.exp(-x))


def _softplus(x: np.ndarray) -> np.ndarray:
    """log(1 + exp(x)), stable form."""
    return np.logaddexp(0.0, x)


SELU_ALPHA = 1.6732632423543772
SELU_SCALE = 1.0507009873554805

ELEMENTWISE: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "relu": lambda x: np.maximum(x, 0.0),
    "relu6": lambda x: np.clip(x, 0.0, 6.0),
    "sigmoid": _sigmoid,
    "silu": lambda x: x * _sigmoid(x),
    "swish": lambda x: x * _sigmoid(x),
    "hard_sigmoid": lambda x: np.clip(x + 3.0, 0.0, 6.0) / 6.0,
    "hard_silu": lambda x: x * np.clip(x + 3.0, 0.0, 6.0) / 6.0,
    "hard_swish": lambda x: x * np.clip(x + 3.0, 0.0, 6.0) / 6.0,
    "hard_tanh": lambda x: np.clip(x, -1.0, 1.0),
    "tanh": np.tanh,
    "elu": lambda x: np.where(x > 0, x, np.expm1(x)),
    "celu": lambda x: np.maximum(x, 0.0) + np.minimum(0.0, np.expm1(x)),
    "selu": lambda x: SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(x)),
    "leaky_relu": lambda x: np.where(x >= 0, x, 0.01 * x),
    "softplus": _softplus,
    "soft_sign": lambda x: x / (1.0 + np.abs(x)),
    "log_sigmoid": lambda x: -_softplus(-x),
    "mish": lambda x: x * np.tanh(_softplus(x)),
    "identity": lambda x: x,
}


@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_elementwise_matches_numpy(name: str) -> None:
    """Each elementwise activation equals its numpy formula."""
    got = np.asarray(getattr(act, name)(jnp.asarray(X)))
    np.testing.assert_allclose(got, ELEMENTWISE[name](X.astype(np.float64)), rtol=1e-5, atol=1e-6)
    assert got.shape == X.shape and got.dtype == np.float32


def test_gelu_exact_and_approximate() -> None:
    """gelu defaults to the tanh approximation; approximate=False uses erf."""
    x = X.astype(np.float64)
    exact = 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))
    approx = 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    np.testing.assert_allclose(act.gelu(X), approx, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(act.gelu(X, approximate=True), approx, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(act.gelu(X, approximate=False), exact, rtol=1e-5, atol=1e-6)


def test_parametrized_activations() -> None:
    """elu/celu alpha and leaky_relu negative_slope are honoured."""
    x = X.astype(np.float64)
    np.testing.assert_allclose(
        act.elu(X, alpha=0.5), np.where(x > 0, x, 0.5 * np.expm1(x)), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        act.celu(X, alpha=2.0),
        np.maximum(x, 0) + np.minimum(0, 2.0 * np.expm1(x / 2.0)),
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(act.leaky_relu(X, negative_slope=0.2), np.where(x >= 0, x, 0.2 * x), rtol=1e-6)


def test_softmax_log_softmax_logsumexp() -> None:
    """softmax family along an axis matches numpy."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4, 5, 6)).astype(np.float32) * 3
    for axis in (-1, 0, 1):
        m = z.max(axis=axis, keepdims=True)
        e = np.exp(z - m)
        sm = e / e.sum(axis=axis, keepdims=True)
        lse = np.log(e.sum(axis=axis, keepdims=True)) + m
        np.testing.assert_allclose(act.softmax(z, axis=axis), sm, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(act.log_softmax(z, axis=axis), z - lse, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(act.logsumexp(z, axis=axis), np.squeeze(lse, axis), rtol=1e-5)
    np.testing.assert_allclose(act.softmax(z, axis=(1, 2)).sum(axis=(1, 2)), np.ones(4), rtol=1e-5)


def test_softmax_where_masks_entries() -> None:
    """softmax(where=...) gives zero weight to excluded entries."""
    z = jnp.array([1.0, 2.0, 3.0, 4.0])
    where = jnp.array([True, False, True, True])
    got = act.softmax(z, where=where)
    e = np.exp(np.array([1.0, 0.0, 3.0, 4.0]) - 4.0) * np.array([1, 0, 1, 1])
    np.testing.assert_allclose(got, e / e.sum(), rtol=1e-6)


def test_glu() -> None:
    """glu(x) = a * sigmoid(b) with x split in halves along axis."""
    rng = np.random.default_rng(1)
    z = rng.normal(size=(3, 8)).astype(np.float32)
    a, b = z[:, :4], z[:, 4:]
    np.testing.assert_allclose(act.glu(z), a * _sigmoid(b), rtol=1e-5)
    a0, b0 = z[:1], z[1:2]
    np.testing.assert_allclose(act.glu(z[:2], axis=0), a0 * _sigmoid(b0), rtol=1e-5)


def test_one_hot() -> None:
    """one_hot matches np.eye indexing; out-of-range gives all zeros."""
    idx = np.array([[0, 2], [1, 5]])
    got = act.one_hot(idx, 3)
    ref = np.zeros((2, 2, 3), np.float32)
    for i in range(2):
        for j in range(2):
            if idx[i, j] < 3:
                ref[i, j, idx[i, j]] = 1.0
    np.testing.assert_array_equal(got, ref)
    assert got.dtype == jnp.float32
    assert act.one_hot(idx, 3, dtype=jnp.int32).dtype == jnp.int32
    np.testing.assert_array_equal(act.one_hot(np.array([1, 0]), 2, axis=0), np.array([[0, 1], [1, 0]]))


@pytest.mark.parametrize("fn", [act.standardize, act.normalize])
def test_standardize_and_normalize(fn: Callable[..., jax.Array]) -> None:
    """(x - mean) / sqrt(var + eps) along an axis; explicit mean/variance honoured."""
    rng = np.random.default_rng(2)
    z = rng.normal(loc=3.0, scale=2.0, size=(5, 7)).astype(np.float32)
    ref = (z - z.mean(-1, keepdims=True)) / np.sqrt(z.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(fn(z), ref, rtol=1e-4, atol=1e-5)
    ref0 = (z - z.mean(0, keepdims=True)) / np.sqrt(z.var(0, keepdims=True) + 1e-3)
    np.testing.assert_allclose(fn(z, axis=0, epsilon=1e-3), ref0, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fn(z, mean=1.0, variance=4.0), (z - 1.0) / np.sqrt(4.0 + 1e-5), rtol=1e-5)


def test_gradients_are_finite() -> None:
    """Gradients of the smooth activations are finite everywhere on the grid."""
    for name in ("gelu", "silu", "softplus", "log_sigmoid", "mish", "elu", "selu", "celu"):
        g = jax.vmap(jax.grad(getattr(act, name)))(jnp.asarray(X))
        assert np.all(np.isfinite(np.asarray(g))), name
    np.testing.assert_allclose(jax.vmap(jax.grad(act.relu))(jnp.array([-1.0, 2.0])), [0.0, 1.0])


def test_bfloat16_preserved() -> None:
    """Activations keep low-precision dtypes."""
    xb = jnp.asarray(X, jnp.bfloat16)
    for name in ("relu", "gelu", "silu", "sigmoid", "tanh", "softplus"):
        assert getattr(act, name)(xb).dtype == jnp.bfloat16, name
    assert act.softmax(xb).dtype == jnp.bfloat16


def test_all_exports() -> None:
    """Every name in __all__ exists and is callable."""
    expected = {
        "relu",
        "relu6",
        "gelu",
        "silu",
        "swish",
        "sigmoid",
        "hard_sigmoid",
        "hard_silu",
        "hard_swish",
        "hard_tanh",
        "tanh",
        "elu",
        "celu",
        "selu",
        "leaky_relu",
        "softplus",
        "soft_sign",
        "log_sigmoid",
        "softmax",
        "log_softmax",
        "logsumexp",
        "glu",
        "one_hot",
        "standardize",
        "normalize",
        "mish",
        "identity",
    }
    assert expected <= set(act.__all__)
    for name in act.__all__:
        assert callable(getattr(act, name)), name
