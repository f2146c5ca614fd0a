"""The behaviour shown in Flax's `guides/performance`, run with `import nnxfn as nnx`.

The three ways of writing the train step (`nnx.jit`, `nnx.cached_partial`, and
plain `jax.jit` over `nnx.split`/`nnx.merge` of a tuple of objects) must give
the same results.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import nnxfn as nnx


class Model(nnx.Module):
    def __init__(self, din, dmid, dout, rngs: nnx.Rngs):
        self.linear = nnx.Linear(din, dmid, rngs=rngs)
        self.bn = nnx.BatchNorm(dmid, use_running_average=False, rngs=rngs)
        self.dropout = nnx.Dropout(0.2, deterministic=False, rngs=rngs)
        self.linear_out = nnx.Linear(dmid, dout, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.dropout(self.bn(self.linear(x))))
        return self.linear_out(x)


def setup():
    model = Model(2, 16, 3, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    metrics = nnx.MultiMetric(loss=nnx.metrics.Average("loss"))
    return model, optimizer, metrics


def body(model, optimizer, metrics, x, y):
    def loss_fn(model):
        return ((model(x) - y) ** 2).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    metrics.update(loss=loss)
    return loss


train_step = nnx.jit(body)
X = jax.random.normal(jax.random.key(1), (32, 2))
Y = jnp.zeros((32, 3))


def run_nnx_jit(steps=5):
    model, optimizer, metrics = setup()
    losses = [float(train_step(model, optimizer, metrics, X, Y)) for _ in range(steps)]
    return model, optimizer, metrics, losses


def test_nnx_jit_train_step():
    model, optimizer, metrics, losses = run_nnx_jit()
    assert int(optimizer.step.value) == 5
    np.testing.assert_allclose(metrics.compute()["loss"], np.mean(losses), rtol=1e-5)
    assert losses[-1] < losses[0]


def test_cached_partial_matches_nnx_jit():
    ref_model, _, _, ref_losses = run_nnx_jit()
    model, optimizer, metrics = setup()
    cached_train_step = nnx.cached_partial(train_step, model, optimizer, metrics)
    losses = [float(cached_train_step(X, Y)) for _ in range(5)]
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert int(optimizer.step.value) == 5
    np.testing.assert_allclose(model.linear.kernel[...], ref_model.linear.kernel[...], rtol=1e-5)
    np.testing.assert_allclose(model.bn.mean[...], ref_model.bn.mean[...], rtol=1e-5)


def test_plain_jax_jit_over_split_tuple_matches_nnx_jit():
    ref_model, _, ref_metrics, ref_losses = run_nnx_jit()
    model, optimizer, metrics = setup()
    graphdef, state = nnx.split((model, optimizer, metrics))

    @jax.jit
    def jax_train_step(graphdef, state, x, y):
        model, optimizer, metrics = nnx.merge(graphdef, state)
        loss = body(model, optimizer, metrics, x, y)
        state = nnx.state((model, optimizer, metrics))
        return loss, state

    losses = []
    for _ in range(5):
        loss, state = jax_train_step(graphdef, state, X, Y)
        losses.append(float(loss))
    assert int(optimizer.step.value) == 0  # nothing written back yet
    nnx.update((model, optimizer, metrics), state)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert int(optimizer.step.value) == 5
    np.testing.assert_allclose(model.linear.kernel[...], ref_model.linear.kernel[...], rtol=1e-5)
    np.testing.assert_allclose(metrics.compute()["loss"], ref_metrics.compute()["loss"], rtol=1e-5)
