"""The behaviour shown in Flax's `guides/randomness` guide, run with `import nnxfn as nnx`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import nnxfn as nnx


class Model(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.linear = nnx.Linear(20, 10, rngs=rngs)
        self.drop = nnx.Dropout(0.1, rngs=rngs)

    def __call__(self, x):
        return nnx.relu(self.drop(self.linear(x)))


class PassedRngsModel(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.linear = nnx.Linear(20, 10, rngs=rngs)
        self.drop = nnx.Dropout(0.1)

    def __call__(self, x, rngs):
        return nnx.relu(self.drop(self.linear(x), rngs=rngs))


def test_rngs_sampling_shorthands_match_jax_random():
    rngs = nnx.Rngs(0, params=1)
    z1 = rngs.normal((2, 3))
    np.testing.assert_array_equal(z1, jax.random.normal(nnx.Rngs(0)(), (2, 3)))
    z2 = rngs.params.bernoulli(0.5, (10,))
    np.testing.assert_array_equal(z2, jax.random.bernoulli(nnx.Rngs(params=1).params(), 0.5, (10,)))
    assert z1.shape == (2, 3) and z2.dtype == jnp.bool_


def test_streams_count_calls_and_fall_back_to_default():
    rngs = nnx.Rngs(params=0, dropout=jax.random.key(1))
    rngs.params()
    rngs.dropout()
    assert int(rngs.params.count[...]) == 1 and int(rngs.dropout.count[...]) == 1

    rngs = nnx.Rngs(0, params=1)
    k1, k2, k3 = rngs.params(), rngs.dropout(), rngs()
    assert int(rngs.params.count[...]) == 1
    assert int(rngs.default.count[...]) == 2  # `dropout` fell back to `default`
    assert not jnp.array_equal(jax.random.key_data(k2), jax.random.key_data(k3))
    assert not jnp.array_equal(jax.random.key_data(k1), jax.random.key_data(k2))


def test_keys_come_from_fold_in_of_the_count():
    rngs = nnx.Rngs(params=0)
    key0 = rngs.params()
    key1 = rngs.params()
    base = jax.random.key(0)
    np.testing.assert_array_equal(jax.random.key_data(key0), jax.random.key_data(jax.random.fold_in(base, 0)))
    np.testing.assert_array_equal(jax.random.key_data(key1), jax.random.key_data(jax.random.fold_in(base, 1)))


def test_dropout_uses_passed_rngs():
    rngs = nnx.Rngs(0)
    model = PassedRngsModel(rngs=rngs)
    model.drop.deterministic = False
    x = rngs.normal((32, 20))
    y = model(x, rngs=rngs)
    assert y.shape == (32, 10)
    dropout = nnx.Dropout(0.5)
    out = dropout(jnp.ones(4), rngs=nnx.Rngs(1))
    assert set(np.unique(np.asarray(out)).tolist()) <= {0.0, 2.0}


def test_split_rngs_under_vmap_give_different_masks():
    model = PassedRngsModel(rngs=nnx.Rngs(0))
    model.drop.deterministic = False

    @nnx.vmap(in_axes=(None, 0, 0), out_axes=0)
    def model_forward(model, x, rngs):
        return model(x, rngs=rngs)

    split_rngs = nnx.Rngs(1).split(5)
    y = model_forward(model, jnp.ones((5, 20)), split_rngs)
    assert y.shape == (5, 10)
    assert not np.allclose(y[0], y[1])


def test_rng_state_filters():
    model = Model(nnx.Rngs(params=0, dropout=1))
    rng_state = nnx.state(model, nnx.RngState)
    key_state = nnx.state(model, nnx.RngKey)
    count_state = nnx.state(model, nnx.RngCount)
    dropout_state = nnx.state(model, "dropout")
    assert len(jax.tree.leaves(rng_state)) == 2
    assert len(jax.tree.leaves(key_state)) == 1 and len(jax.tree.leaves(count_state)) == 1
    assert len(jax.tree.leaves(dropout_state)) == 2
    assert jax.tree.leaves(key_state)[0].dtype == jax.random.key(0).dtype


def test_reseed_repeats_dropout_masks():
    model = Model(nnx.Rngs(params=0, dropout=1))
    x = jnp.ones((1, 20))
    y1 = model(x)
    y2 = model(x)
    nnx.reseed(model, dropout=1)
    y3 = model(x)
    assert not jnp.allclose(y1, y2)
    assert jnp.allclose(y1, y3)


def test_with_rngs_split_and_prefix_vmap():
    model = Model(nnx.Rngs(params=0, dropout=1))
    x = jnp.ones((1, 20))
    in_axes = nnx.prefix(model, {"dropout": 0, ...: None}, graph=False)

    @nnx.with_rngs(split=5, only="dropout", graph=False)
    @nnx.vmap(in_axes=(in_axes, None), out_axes=0, graph=False)
    def sample_from_model(model, x):
        return model(x)

    y = sample_from_model(model, x)
    assert y.shape == (5, 1, 10)
    assert not np.allclose(y[0], y[1])


def test_broadcast_rngs_in_scan_keep_one_dropout_mask():
    class Count(nnx.Variable):
        pass

    class RNNCell(nnx.Module):
        def __init__(self, din, dout, rngs):
            self.linear = nnx.Linear(dout + din, dout, rngs=rngs)
            self.drop = nnx.Dropout(0.1, rngs=rngs, rng_collection="recurrent_dropout")
            self.dout = dout
            self.count = Count(jnp.array(0, jnp.uint32))

        def __call__(self, h, x):
            h = self.drop(h)
            y = nnx.relu(self.linear(jnp.concatenate([h, x], axis=-1)))
            self.count[...] = self.count[...] + 1
            return y, y

        def initial_state(self, batch_size: int):
            return jnp.zeros((batch_size, self.dout))

    cell = RNNCell(8, 16, nnx.Rngs(params=0, recurrent_dropout=1))

    @nnx.jit(graph=False)
    def rnn_forward(cell: RNNCell, x: jax.Array):
        h = cell.initial_state(batch_size=x.shape[0])
        broadcast_cell = nnx.with_rngs(cell, broadcast=x.shape[1], graph=False)
        in_axes = nnx.prefix(broadcast_cell, {"recurrent_dropout": 0, ...: None}, graph=False)

        @nnx.scan(in_axes=(in_axes, nnx.Carry, 1), out_axes=(nnx.Carry, 1), graph=False)
        def unroll(cell, h, x):
            h, y = cell(h, x)
            return h, y

        _, y = unroll(broadcast_cell, h, x)
        return y

    y = rnn_forward(cell, jnp.ones((4, 20, 8)))
    assert y.shape == (4, 20, 16)
    assert int(cell.count[...]) == 20
