"""Value tests for nnxfn.nn.initializers (statistics, orthogonality, defaults)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnxfn.nn import initializers as init

KEY = jax.random.key(0)


def _rel_close(a: float, b: float, rtol: float) -> bool:
    """True if ``a`` is within relative tolerance ``rtol`` of ``b``."""
    return abs(a - b) <= rtol * abs(b)


def test_exports_are_present() -> None:
    """Every Flax initializer name is exported."""
    names = [
        "Initializer",
        "constant",
        "delta_orthogonal",
        "glorot_normal",
        "glorot_uniform",
        "he_normal",
        "he_uniform",
        "kaiming_normal",
        "kaiming_uniform",
        "lecun_normal",
        "lecun_uniform",
        "normal",
        "ones",
        "ones_init",
        "orthogonal",
        "truncated_normal",
        "uniform",
        "variance_scaling",
        "xavier_normal",
        "xavier_uniform",
        "zeros",
        "zeros_init",
    ]
    for name in names:
        assert hasattr(init, name), name
        assert name in init.__all__


def test_zeros_ones_constant() -> None:
    """zeros/ones are initializers; zeros_init/ones_init/constant are builders."""
    shape = (3, 4)
    np.testing.assert_array_equal(init.zeros(KEY, shape), np.zeros(shape))
    np.testing.assert_array_equal(init.ones(KEY, shape), np.ones(shape))
    np.testing.assert_array_equal(init.zeros_init()(KEY, shape), np.zeros(shape))
    np.testing.assert_array_equal(init.ones_init()(KEY, shape), np.ones(shape))
    np.testing.assert_array_equal(init.constant(2.5)(KEY, shape), np.full(shape, 2.5))
    assert init.zeros(KEY, shape).dtype == jnp.float32
    assert init.ones(KEY, shape, jnp.bfloat16).dtype == jnp.bfloat16
    assert init.constant(1.0, dtype=jnp.float16)(KEY, (2,)).dtype == jnp.float16


def test_normal_default_stddev_is_1e_2() -> None:
    """normal() defaults to stddev 0.01 and zero mean."""
    x = np.asarray(init.normal()(KEY, (200_000,)))
    assert x.dtype == np.float32
    assert abs(x.mean()) < 1e-4
    assert _rel_close(float(x.std()), 1e-2, 0.02)
    y = np.asarray(init.normal(3.0)(KEY, (200_000,)))
    assert _rel_close(float(y.std()), 3.0, 0.02)


def test_uniform_default_scale_is_1e_2() -> None:
    """uniform() samples U[0, 0.01) by default (JAX/Flax convention)."""
    x = np.asarray(init.uniform()(KEY, (200_000,)))
    assert x.min() >= 0.0 and x.max() < 1e-2
    assert _rel_close(float(x.mean()), 5e-3, 0.02)
    assert _rel_close(float(x.std()), 1e-2 / math.sqrt(12), 0.02)


@pytest.mark.parametrize(("stddev", "lower", "upper"), [(1e-2, -2.0, 2.0), (1.0, -1.0, 0.5)])
def test_truncated_normal_bounds(stddev: float, lower: float, upper: float) -> None:
    """truncated_normal values lie in [lower*stddev, upper*stddev]."""
    x = np.asarray(init.truncated_normal(stddev, lower=lower, upper=upper)(KEY, (100_000,)))
    assert x.min() >= lower * stddev - 1e-7
    assert x.max() <= upper * stddev + 1e-7
    # Both tails get close to the bounds with this many samples.
    assert x.min() < lower * stddev * 0.95
    assert x.max() > upper * stddev * 0.95


def test_truncated_normal_default_std() -> None:
    """Default stddev 0.01 truncated at +-2 sigma has std 0.01 * 0.8796."""
    x = np.asarray(init.truncated_normal()(KEY, (200_000,)))
    assert _rel_close(float(x.std()), 1e-2 * 0.87962566, 0.02)


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """Fan-in / fan-out for in_axis=-2, out_axis=-1 (receptive field = the rest)."""
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


@pytest.mark.parametrize("mode", ["fan_in", "fan_out", "fan_avg", "fan_geo_avg"])
@pytest.mark.parametrize("distribution", ["normal", "truncated_normal", "uniform"])
@pytest.mark.parametrize("shape", [(300, 500), (3, 3, 40, 60)])
def test_variance_scaling_variance(mode: str, distribution: str, shape: tuple[int, ...]) -> None:
    """Sample variance matches scale / fan for every mode and distribution."""
    scale = 2.0
    fan_in, fan_out = _fans(shape)
    denom = {
        "fan_in": fan_in,
        "fan_out": fan_out,
        "fan_avg": (fan_in + fan_out) / 2,
        "fan_geo_avg": math.sqrt(fan_in * fan_out),
    }[mode]
    w = np.asarray(init.variance_scaling(scale, mode, distribution)(KEY, shape))
    assert w.shape == shape and w.dtype == np.float32
    assert abs(w.mean()) < 0.02 * math.sqrt(scale / denom)
    assert _rel_close(float(w.var()), scale / denom, 0.03)
    if distribution == "uniform":
        assert np.abs(w).max() <= math.sqrt(3 * scale / denom) + 1e-6
    if distribution == "truncated_normal":
        assert np.abs(w).max() <= 2 * math.sqrt(scale / denom) / 0.87962566 + 1e-6


def test_variance_scaling_batch_axis_and_custom_axes() -> None:
    """batch_axis dims are excluded from fans; in/out axes are configurable."""
    w = np.asarray(init.variance_scaling(1.0, "fan_in", "normal", batch_axis=0)(KEY, (8, 200, 300)))
    assert _rel_close(float(w.var()), 1 / 200, 0.03)
    w = np.asarray(init.variance_scaling(1.0, "fan_in", "normal", in_axis=0, out_axis=1)(KEY, (400, 300)))
    assert _rel_close(float(w.var()), 1 / 400, 0.03)


@pytest.mark.parametrize(
    ("builder", "scale", "mode", "uniform"),
    [
        (init.lecun_normal, 1.0, "fan_in", False),
        (init.lecun_uniform, 1.0, "fan_in", True),
        (init.he_normal, 2.0, "fan_in", False),
        (init.he_uniform, 2.0, "fan_in", True),
        (init.kaiming_normal, 2.0, "fan_in", False),
        (init.kaiming_uniform, 2.0, "fan_in", True),
        (init.glorot_normal, 1.0, "fan_avg", False),
        (init.glorot_uniform, 1.0, "fan_avg", True),
        (init.xavier_normal, 1.0, "fan_avg", False),
        (init.xavier_uniform, 1.0, "fan_avg", True),
    ],
)
def test_named_variance_scaling(builder, scale: float, mode: str, uniform: bool) -> None:
    """Named initializers follow the variance-scaling formula."""
    shape = (400, 250)
    fan_in, fan_out = shape
    denom = fan_in if mode == "fan_in" else (fan_in + fan_out) / 2
    w = np.asarray(builder()(KEY, shape))
    assert _rel_close(float(w.var()), scale / denom, 0.03)
    if uniform:
        assert np.abs(w).max() <= math.sqrt(3 * scale / denom) + 1e-6
    ref = init.variance_scaling(scale, mode, "uniform" if uniform else "truncated_normal")
    np.testing.assert_allclose(w, ref(KEY, shape), rtol=1e-6)


def test_aliases_produce_same_values() -> None:
    """kaiming == he and xavier == glorot for the same key."""
    shape = (7, 5)
    np.testing.assert_array_equal(init.kaiming_normal()(KEY, shape), init.he_normal()(KEY, shape))
    np.testing.assert_array_equal(init.kaiming_uniform()(KEY, shape), init.he_uniform()(KEY, shape))
    np.testing.assert_array_equal(init.xavier_normal()(KEY, shape), init.glorot_normal()(KEY, shape))
    np.testing.assert_array_equal(init.xavier_uniform()(KEY, shape), init.glorot_uniform()(KEY, shape))


@pytest.mark.parametrize("shape", [(64, 16), (16, 64), (32, 32), (3, 20, 8)])
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_orthogonal(shape: tuple[int, ...], scale: float) -> None:
    """Columns (or rows, if fewer) are orthonormal times ``scale``."""
    w = np.asarray(init.orthogonal(scale)(KEY, shape), dtype=np.float64)
    mat = w.reshape(-1, shape[-1])  # rows = all dims but the column axis
    if mat.shape[0] >= mat.shape[1]:
        gram = mat.T @ mat
    else:
        gram = mat @ mat.T
    np.testing.assert_allclose(gram, scale**2 * np.eye(gram.shape[0]), atol=1e-5)


def test_orthogonal_column_axis() -> None:
    """column_axis=0 makes the slices along axis 0 orthonormal."""
    w = np.asarray(init.orthogonal(column_axis=0)(KEY, (8, 30)), dtype=np.float64)
    np.testing.assert_allclose(w @ w.T, np.eye(8), atol=1e-5)


@pytest.mark.parametrize("shape", [(3, 16, 16), (3, 3, 8, 16), (3, 3, 3, 4, 4)])
def test_delta_orthogonal(shape: tuple[int, ...]) -> None:
    """Only the spatial centre is non-zero, and it is orthogonal."""
    w = np.asarray(init.delta_orthogonal()(KEY, shape), dtype=np.float64)
    centre = tuple(k // 2 for k in shape[:-2])
    mid = w[centre]
    # Kernel (in <= out): the centre (in, out) matrix has orthonormal rows.
    np.testing.assert_allclose(mid @ mid.T, np.eye(shape[-2]), atol=1e-5)
    rest = w.copy()
    rest[centre] = 0.0
    assert np.all(rest == 0.0)


def test_delta_orthogonal_rejects_bad_shape() -> None:
    """delta_orthogonal needs a 3-5 D kernel with in_features <= out_features."""
    with pytest.raises(ValueError):
        init.delta_orthogonal()(KEY, (4, 4))
    with pytest.raises(ValueError):
        init.delta_orthogonal()(KEY, (3, 3, 16, 8))


@pytest.mark.parametrize(
    "builder",
    [
        init.normal,
        init.uniform,
        init.truncated_normal,
        init.lecun_normal,
        init.glorot_uniform,
        init.he_normal,
        init.orthogonal,
    ],
)
def test_determinism_dtype_and_key_dependence(builder) -> None:
    """Same key gives the same values; different keys differ; dtype is honoured."""
    f = builder()
    a = f(jax.random.key(1), (16, 8))
    b = f(jax.random.key(1), (16, 8))
    c = f(jax.random.key(2), (16, 8))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert a.shape == (16, 8) and a.dtype == jnp.float32
    assert f(jax.random.key(1), (16, 8), jnp.bfloat16).dtype == jnp.bfloat16
    assert builder(dtype=jnp.float16)(jax.random.key(1), (4, 4)).dtype == jnp.float16


def test_initializers_work_under_jit() -> None:
    """Initializers trace under jit with a static shape."""
    f = jax.jit(lambda k: init.lecun_normal()(k, (5, 3)))
    np.testing.assert_allclose(f(KEY), init.lecun_normal()(KEY, (5, 3)), rtol=1e-6)


def test_docstring_examples_run() -> None:
    import doctest

    result = doctest.testmod(init, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
