"""The behaviour shown in Flax's `nnx_basics` guide, run with `import nnxfn as nnx`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import nnxfn as nnx


class Linear(nnx.Module):
    def __init__(self, din: int, dout: int, *, rngs: nnx.Rngs):
        self.w = nnx.Param(rngs.params.uniform((din, dout)))
        self.b = nnx.Param(jnp.zeros((dout,)))
        self.din, self.dout = din, dout

    def __call__(self, x: jax.Array):
        return x @ self.w + self.b[None]


class Count(nnx.Variable):
    pass


class MLP(nnx.Module):
    def __init__(self, din: int, dmid: int, dout: int, *, rngs: nnx.Rngs):
        self.linear1 = Linear(din, dmid, rngs=rngs)
        self.dropout = nnx.Dropout(rate=0.1, deterministic=False)
        self.bn = nnx.BatchNorm(dmid, use_running_average=False, rngs=rngs)
        self.linear2 = Linear(dmid, dout, rngs=rngs)

    def __call__(self, x: jax.Array, rngs: nnx.Rngs):
        x = nnx.gelu(self.dropout(self.bn(self.linear1(x)), rngs=rngs))
        return self.linear2(x)


class StatefulLinear(nnx.Module):
    def __init__(self, din: int, dout: int, *, rngs: nnx.Rngs):
        self.w = nnx.Param(rngs.uniform((din, dout)))
        self.b = nnx.Param(jnp.zeros((dout,)))
        self.count = Count(jnp.array(0, dtype=jnp.uint32))

    def __call__(self, x: jax.Array):
        self.count.value += 1
        return x @ self.w + self.b


def test_custom_linear_uses_the_params_stream():
    model = Linear(2, 5, rngs=nnx.Rngs(params=0))
    expected_w = jax.random.uniform(nnx.Rngs(params=0).params(), (2, 5))
    np.testing.assert_allclose(model.w[...], expected_w)
    y = model(x=jnp.ones((1, 2)))
    np.testing.assert_allclose(y, expected_w.sum(0, keepdims=True), rtol=1e-6)
    assert (model.din, model.dout) == (2, 5)


def test_counter_variable_in_place_update():
    class Counter(nnx.Module):
        def __init__(self):
            self.count = Count(jnp.array(0))

        def __call__(self):
            self.count[...] += 1

    counter = Counter()
    assert int(counter.count[...]) == 0
    counter()
    counter()
    assert int(counter.count[...]) == 2


def test_mlp_with_dropout_and_batchnorm_updates_batch_stats():
    model = MLP(2, 16, 5, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(3), (3, 2))
    y = model(x=x, rngs=nnx.Rngs(1))
    assert y.shape == (3, 5)
    h = x @ model.linear1.w[...] + model.linear1.b[...]
    np.testing.assert_allclose(model.bn.mean[...], 0.01 * h.mean(0), rtol=1e-5, atol=1e-6)


def test_lora_surgery_by_attribute_assignment():
    class LoraParam(nnx.Param):
        pass

    class LoraLinear(nnx.Module):
        def __init__(self, linear: Linear, rank: int, rngs: nnx.Rngs):
            self.linear = linear
            self.A = LoraParam(rngs.normal((linear.din, rank)))
            self.B = LoraParam(rngs.normal((rank, linear.dout)))

        def __call__(self, x: jax.Array):
            return self.linear(x) + x @ self.A @ self.B

    rngs = nnx.Rngs(0)
    model = MLP(2, 32, 5, rngs=rngs)
    old_w = model.linear1.w
    model.linear1 = LoraLinear(model.linear1, 4, rngs=rngs)
    model.linear2 = LoraLinear(model.linear2, 4, rngs=rngs)
    y = model(x=jnp.ones((3, 2)), rngs=rngs)
    assert y.shape == (3, 5)
    assert model.linear1.linear.w is old_w
    lora = nnx.state(model, LoraParam)
    assert set(lora.keys()) == {"linear1", "linear2"}
    assert set(lora["linear1"].keys()) == {"A", "B"}
    assert model.linear1.A.shape == (2, 4) and model.linear2.B.shape == (4, 5)


def test_train_step_with_optimizer_update_model_grads():
    model = MLP(2, 16, 10, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    rngs = nnx.Rngs(1)

    @nnx.jit
    def train_step(model, optimizer, x, y, rngs):
        def loss_fn(model: MLP, rngs: nnx.Rngs):
            y_pred = model(x, rngs)
            return jnp.mean((y_pred - y) ** 2)

        loss, grads = nnx.value_and_grad(loss_fn)(model, rngs)
        optimizer.update(model, grads)
        return loss

    x, y = jnp.ones((5, 2)), jnp.ones((5, 10))
    w_before = np.asarray(model.linear2.w[...])
    key_count = int(rngs.default.count[...])
    losses = [float(train_step(model, optimizer, x, y, rngs)) for _ in range(3)]
    assert int(optimizer.step.value) == 3
    assert not np.allclose(model.linear2.w[...], w_before)
    assert int(rngs.default.count[...]) == key_count + 3  # dropout drew one key per step
    assert all(np.isfinite(losses))


def test_vmap_creates_stacked_models_and_scan_runs_them():
    @nnx.vmap(in_axes=0, out_axes=0)
    def create_model(rngs):
        return MLP(10, 32, 10, rngs=rngs)

    @nnx.scan(in_axes=(0, 0, nnx.Carry), out_axes=nnx.Carry)
    def forward(model: MLP, rngs: nnx.Rngs, x):
        return model(x, rngs)

    model = create_model(nnx.Rngs(0).fork(split=5))
    assert model.linear1.w.shape == (5, 10, 32)
    assert model.bn.mean.shape == (5, 32)
    # every stacked layer got different weights
    assert not np.allclose(model.linear1.w[0], model.linear1.w[1])
    y = forward(model, nnx.Rngs(1).fork(split=5), jnp.ones((3, 10)))
    assert y.shape == (3, 10)
    assert np.abs(np.asarray(model.bn.mean[...])).sum() > 0  # batch stats written back


def test_split_jit_merge_update_roundtrip():
    model = StatefulLinear(din=3, dout=5, rngs=nnx.Rngs(0))
    model(jnp.ones((1, 3)))
    assert int(model.count.value) == 1

    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(graphdef: nnx.GraphDef, state: nnx.State, x: jax.Array):
        model = nnx.merge(graphdef, state)
        y = model(x)
        _, state = nnx.split(model)
        return y, state

    y, state = forward(graphdef, state, x=jnp.ones((1, 3)))
    assert int(model.count.value) == 1  # not yet written back
    nnx.update(model, state)
    assert int(model.count.value) == 2
    np.testing.assert_allclose(y, jnp.ones((1, 3)) @ model.w[...], rtol=1e-6)


def test_split_with_filters_merge_and_update_multiple_states():
    model = StatefulLinear(din=3, dout=5, rngs=nnx.Rngs(0))
    graphdef, params, counts = nnx.split(model, nnx.Param, Count)
    assert set(params.keys()) == {"w", "b"}
    assert set(counts.keys()) == {"count"}
    model2 = nnx.merge(graphdef, params, counts)
    np.testing.assert_array_equal(model2.w[...], model.w[...])
    counts["count"].value = jnp.array(7, dtype=jnp.uint32)
    nnx.update(model, params, counts)
    assert int(model.count.value) == 7
