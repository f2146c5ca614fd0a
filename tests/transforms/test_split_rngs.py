"""`nnx.split_rngs` / `nnx.fork_rngs` and random streams through vmap/scan."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxfn as nnx
from tx_models import Boom, Dropoutish, Linear, key_data

N = 4


def test_split_rngs_context_manager_shapes_and_restore():
    rngs = nnx.Rngs(0, dropout=1)
    key0 = key_data(rngs.default.key[...])
    with nnx.split_rngs(rngs, splits=N):
        assert rngs.default.key.shape == (N,) and rngs.dropout.key.shape == (N,)
        np.testing.assert_array_equal(rngs.default.count[...], np.zeros(N))
        want = jax.random.split(jax.random.fold_in(jax.random.key(0), 0), N)
        np.testing.assert_array_equal(key_data(rngs.default.key[...]), key_data(want))
    np.testing.assert_array_equal(key_data(rngs.default.key[...]), key0)
    assert rngs.default.key.shape == () and int(rngs.default.count[...]) == 1
    assert int(rngs.dropout.count[...]) == 1
    with nnx.split_rngs(rngs, splits=N):  # the next split differs
        second = key_data(rngs.default.key[...])
    assert not np.array_equal(second, key_data(want))


def test_split_rngs_only_filter_and_tuple_splits():
    rngs = nnx.Rngs(0, dropout=1)
    with nnx.split_rngs(rngs, splits=(2, 3), only="dropout"):
        assert rngs.dropout.key.shape == (2, 3)
        assert rngs.default.key.shape == ()
    assert int(rngs.default.count[...]) == 0 and int(rngs.dropout.count[...]) == 1


def test_split_rngs_restores_after_exception():
    rngs = nnx.Rngs(0)
    key0 = key_data(rngs.default.key[...])

    @nnx.split_rngs(splits=N)
    def f(rngs):
        assert rngs.default.key.shape == (N,)
        raise Boom()

    with pytest.raises(Boom):
        f(rngs)
    np.testing.assert_array_equal(key_data(rngs.default.key[...]), key0)
    assert rngs.default.key.shape == ()


def test_fork_rngs_one_fresh_key():
    rngs = nnx.Rngs(0)
    key0 = key_data(rngs.default.key[...])
    with nnx.fork_rngs(rngs):
        inner = key_data(rngs.default.key[...])
        assert inner.shape == key0.shape and not np.array_equal(inner, key0)
    np.testing.assert_array_equal(key_data(rngs.default.key[...]), key0)
    with nnx.fork_rngs(rngs, split=N):
        assert rngs.default.key.shape == (N,)


def test_vmap_init_with_split_rngs_matches_per_member_init():
    """Members made by vmap over split keys equal layers made one by one from those keys."""
    rngs = nnx.Rngs(0)

    @nnx.split_rngs(splits=N)
    @nnx.vmap(in_axes=0, out_axes=0)
    def make(rngs):
        return Linear(3, 2, rngs=rngs)

    stack = make(rngs)
    keys = jax.random.split(jax.random.fold_in(jax.random.key(0), 0), N)
    for i in range(N):
        ref = Linear(3, 2, rngs=nnx.Rngs(keys[i]))
        np.testing.assert_allclose(stack.kernel[...][i], ref.kernel[...], rtol=1e-6)
        np.testing.assert_allclose(stack.bias[...][i], ref.bias[...], rtol=1e-6)
    assert int(rngs.default.count[...]) == 1


def test_vmap_rngs_with_state_axes_module_holding_rngs():
    """Split keys mapped on axis 0 via StateAxes while Params stay broadcast."""

    class Noisy(nnx.Module):
        def __init__(self, rngs):
            self.w = nnx.Param(jnp.ones(8))
            self.rngs = rngs

        def __call__(self, x):
            return x * self.w + jax.random.normal(self.rngs.noise(), x.shape)

    m = Noisy(nnx.Rngs(noise=0))
    axes = nnx.StateAxes({nnx.RngState: 0, ...: None})

    @nnx.split_rngs(splits=N, only="noise")
    @nnx.vmap(in_axes=(axes, None))
    def f(m, x):
        return m(x)

    y = f(m, jnp.zeros(8))
    assert y.shape == (N, 8)
    assert len({tuple(np.asarray(r)) for r in y}) == N
    keys = jax.random.split(jax.random.fold_in(jax.random.key(0), 0), N)
    want = jnp.stack([jax.random.normal(jax.random.fold_in(k, 0), (8,)) for k in keys])
    np.testing.assert_allclose(y, want, rtol=1e-6)
    assert m.w.shape == (8,)
    assert int(m.rngs.noise.count[...]) == 1


def test_scan_with_split_rngs_gives_one_key_per_step():
    rngs = nnx.Rngs(dropout=2)
    m = Dropoutish(0.5, rngs=rngs)
    axes = nnx.StateAxes({nnx.RngState: 0, ...: None})

    @nnx.split_rngs(splits=N)
    @nnx.scan(in_axes=(nnx.Carry, axes), out_axes=(nnx.Carry, 0))
    def f(x, m):
        return x, m(x)

    _, ys = f(jnp.ones(16), m)
    assert len({tuple(np.asarray(r)) for r in ys}) == N
    assert rngs.dropout.key.shape == () and int(rngs.dropout.count[...]) == 1


def test_rngs_fork_inside_jit():
    rngs = nnx.Rngs(0)

    @nnx.jit
    def f(rngs):
        child = rngs.fork(split=N)
        return child

    child = f(rngs)
    assert isinstance(child, nnx.Rngs) and child is not rngs
    assert child.default.key.shape == (N,)
    assert int(rngs.default.count[...]) == 1
    ref = jax.random.split(jax.random.fold_in(jax.random.key(0), 0), N)
    np.testing.assert_array_equal(key_data(child.default.key[...]), key_data(ref))


def test_rngs_created_inside_vmap_per_seed():
    def make(seed):
        rngs = nnx.Rngs(seed)
        return rngs, rngs()

    rngs, keys = nnx.vmap(make)(jnp.arange(N))
    want = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(s), 0))(jnp.arange(N))
    np.testing.assert_array_equal(key_data(keys), key_data(want))
    np.testing.assert_array_equal(rngs.default.count[...], np.ones(N))
