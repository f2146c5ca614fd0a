"""Dropout: masks, keep-rate statistics, scaling, rng handling, errors."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnxfn import core
from nnxfn.facade.module import Module
from nnxfn.facade.rngs import Rngs
from nnxfn.facade.variables import RngCount, RngKey
from nnxfn.nn.stochastic import Dropout


def test_masks_differ_across_calls_and_layer_owns_its_state():
    drop = Dropout(0.5, rngs=Rngs(dropout=0))
    flat = core.state(drop).flat_dict()
    assert sorted(flat) == [("rngs", "count"), ("rngs", "key")]
    assert type(flat[("rngs", "key")]) is RngKey and type(flat[("rngs", "count")]) is RngCount
    x = jnp.ones(64)
    a, b = drop(x), drop(x)
    assert not np.array_equal(a, b)
    assert int(drop.rngs.count[...]) == 2


def test_construction_forks_the_stream():
    rngs = Rngs(dropout=0)
    d1, d2 = Dropout(0.5, rngs=rngs), Dropout(0.5, rngs=rngs)
    assert int(rngs.dropout.count[...]) == 2  # one fork each
    x = jnp.ones(64)
    assert not np.array_equal(d1(x), d2(x))
    d3 = Dropout(0.5, rngs=Rngs(0))  # falls back to 'default'
    assert d3(x).shape == (64,)
    d4 = Dropout(0.5, rngs=Rngs(dropout=0).dropout)  # an RngStream
    np.testing.assert_array_equal(d4(x), Dropout(0.5, rngs=Rngs(dropout=0))(x))


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5, 0.8])
def test_keep_rate_and_scaling(rate):
    drop = Dropout(rate, rngs=Rngs(dropout=1))
    x = jax.random.uniform(jax.random.key(0), (200_000,), minval=1.0, maxval=2.0)
    y = np.asarray(drop(x))
    kept = y != 0
    assert abs(kept.mean() - (1 - rate)) < 4 * np.sqrt(rate * (1 - rate) / x.size)
    np.testing.assert_allclose(y[kept], np.asarray(x)[kept] / (1 - rate), rtol=1e-6)
    assert abs(y.mean() - float(x.mean())) < 0.02  # unbiased in expectation


def test_matches_equinox_dropout_for_the_same_key():
    key = jax.random.key(3)
    x = jax.random.normal(jax.random.key(1), (4, 50))
    ours = Dropout(0.3)(x, rngs=key)
    ref = eqx.nn.Dropout(0.3)(x, key=key)
    np.testing.assert_allclose(ours, ref, rtol=1e-6)


def test_rate_zero_deterministic_and_rate_one():
    x = jax.random.normal(jax.random.key(0), (3, 4))
    np.testing.assert_array_equal(Dropout(0.0)(x), x)
    np.testing.assert_array_equal(Dropout(0.5, deterministic=True)(x), x)
    np.testing.assert_array_equal(Dropout(0.5)(x, deterministic=True), x)
    np.testing.assert_array_equal(Dropout(1.0)(x), np.zeros((3, 4)))
    assert Dropout(1.0)(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16


def test_broadcast_dims_share_the_mask():
    drop = Dropout(0.5, broadcast_dims=(0, -1), rngs=Rngs(dropout=0))
    y = np.asarray(drop(jnp.ones((6, 40, 5))))
    assert (y == y[:1, :, :1]).all()  # constant along axes 0 and 2
    assert 0 < (y[0, :, 0] != 0).sum() < 40


def test_call_time_rngs_override():
    drop = Dropout(0.5, rngs=Rngs(dropout=0))
    x = jnp.ones(64)
    a = drop(x, rngs=Rngs(dropout=7))
    b = drop(x, rngs=Rngs(dropout=7))
    np.testing.assert_array_equal(a, b)
    assert int(drop.rngs.count[...]) == 0  # own stream untouched
    stream = Rngs(dropout=7).dropout
    np.testing.assert_array_equal(drop(x, rngs=stream), a)
    key = jax.random.key(11)
    np.testing.assert_array_equal(drop(x, rngs=key), drop(x, rngs=key))
    custom = Dropout(0.5, rng_collection="noise")
    np.testing.assert_array_equal(custom(x, rngs=Rngs(noise=7)), a)


def test_train_eval_toggle_in_a_model():
    class Net(Module):
        def __init__(self, rngs):
            self.drop = Dropout(0.5, rngs=rngs)

        def __call__(self, x):
            return self.drop(x)

    net = Net(Rngs(0))
    x = jnp.ones(32)
    net.eval()
    assert net.drop.deterministic is True
    np.testing.assert_array_equal(net(x), x)
    net.train()
    assert not np.array_equal(net(x), x)


def test_errors():
    x = jnp.ones(4)
    with pytest.raises(
        ValueError,
        match=r"Dropout: `deterministic` is False, but no `rngs` argument was provided to Dropout.*nnx.Rngs\(dropout=0\)",
    ):
        Dropout(0.5)(x)
    with pytest.raises(ValueError, match=r"Dropout: deterministic is None"):
        Dropout(0.5, deterministic=None, rngs=Rngs(0))(x)
    with pytest.raises(
        TypeError, match=r"Dropout: rngs must be an nnx.Rngs, an nnx.RngStream or a jax.random key, got int"
    ):
        Dropout(0.5, rngs=0)
    with pytest.raises(TypeError, match=r"Dropout: rngs must be .* got str"):
        Dropout(0.5)(x, rngs="key")
    with pytest.raises(ValueError, match=r"Dropout: rate must be in \[0, 1\], got 1.5"):
        Dropout(1.5)
    with pytest.raises(
        ValueError,
        match=r"Dropout: broadcast_dims \(2,\) has axis 2, out of range for inputs of shape \(4,\)",
    ):
        Dropout(0.5, broadcast_dims=(2,), rngs=Rngs(0))(x)


def test_docstring_examples():
    import doctest

    from nnxfn.nn import stochastic as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
