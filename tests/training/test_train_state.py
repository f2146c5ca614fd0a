"""nnx.TrainState (functional train state), nnx.helpers and nnx.compat."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnxfn as nnx


class Model(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.linear = nnx.Linear(2, 3, rngs=rngs)
        self.bn = nnx.BatchNorm(3, rngs=rngs)

    def __call__(self, x, train: bool):
        return self.bn(self.linear(x), use_running_average=not train)


class TrainState(nnx.TrainState):
    batch_stats: nnx.State


X = jax.random.normal(jax.random.key(1), (8, 2))
Y = jax.random.normal(jax.random.key(2), (8, 3))


def make():
    graphdef, params, stats = nnx.split(Model(nnx.Rngs(0)), nnx.Param, nnx.BatchStat)
    return TrainState.create(graphdef, params=params, tx=optax.sgd(0.1), batch_stats=stats)


def test_create_is_a_pytree_with_static_graphdef_and_tx():
    ts = make()
    assert int(ts.step) == 0
    leaves, treedef = jax.tree.flatten(ts)
    # params (4) + batch stats (2) + step; sgd keeps no state; graphdef/tx are static
    assert len(leaves) == 7
    again = jax.tree.unflatten(treedef, leaves)
    assert again.graphdef is ts.graphdef and again.tx is ts.tx
    with pytest.raises(AttributeError):
        ts.step = 3  # frozen


def test_apply_returns_output_and_new_state():
    ts = make()
    y, (graphdef, state) = ts.apply("params", "batch_stats")(X, train=True)
    model = nnx.merge(ts.graphdef, ts.params, ts.batch_stats, copy=True)  # `ts` stays as it was
    np.testing.assert_allclose(y, model(X, train=True), rtol=1e-6)
    assert graphdef == ts.graphdef
    # the batch statistics moved in the returned state, not in `ts`
    assert not np.allclose(state["bn"]["mean"][...], ts.batch_stats["bn"]["mean"][...])
    out, _ = ts.apply(ts.params, ts.batch_stats).linear(X)  # a sub-module
    np.testing.assert_allclose(
        out, X @ ts.params["linear"]["kernel"][...] + ts.params["linear"]["bias"][...], rtol=1e-6
    )
    with pytest.raises(TypeError, match=r"apply\('tx'\).*not a State"):
        ts.apply("tx")


def test_apply_gradients_is_sgd_and_jits():
    ts = make()

    @jax.jit
    def step(ts):
        def loss(params):
            y, (_, state) = ts.apply(params, ts.batch_stats)(X, train=True)
            return jnp.mean((y - Y) ** 2), nnx.state(nnx.merge(ts.graphdef, state), nnx.BatchStat)

        (value, stats), grads = jax.value_and_grad(loss, has_aux=True)(ts.params)
        return ts.apply_gradients(grads, batch_stats=stats), value

    before = ts.params
    new, loss0 = step(ts)
    grads = jax.grad(lambda p: jnp.mean((ts.apply(p, ts.batch_stats)(X, train=True)[0] - Y) ** 2))(ts.params)
    expected = jax.tree.map(lambda p, g: p - 0.1 * g, before, grads)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), new.params, expected)
    assert int(new.step) == 1
    for _ in range(5):
        new, loss = step(new)
    assert loss < loss0


def test_helpers_namespace():
    assert nnx.helpers.TrainState is nnx.TrainState
    assert nnx.helpers.Sequential is nnx.Sequential and nnx.helpers.Dict is nnx.Dict
    assert nnx.helpers.has_keyword_arg(lambda x, *, rngs: x, "rngs")
    assert not nnx.helpers.has_keyword_arg(lambda x, *rngs: x, "rngs")


def test_compat_names_are_graph_mode():
    assert nnx.compat.split.func is nnx.split and nnx.compat.jit.func is nnx.jit
    assert nnx.compat.Optimizer is nnx.Optimizer
    v = nnx.Param(jnp.ones(2))
    graphdef, state = nnx.compat.split([v, v])
    a, b = nnx.merge(graphdef, state)
    assert a is b  # shared references survive, as in Flax's graph mode
    with pytest.raises(AttributeError, match="nnxfn.compat.*no_such"):
        nnx.compat.no_such
    assert "vmap" in dir(nnx.compat)


def test_top_level_training_names():
    assert nnx.optimizer.Optimizer is nnx.Optimizer
    assert issubclass(nnx.OptVariable, nnx.OptState) and not issubclass(nnx.OptVariable, nnx.OptArray)
    assert nnx.MultiMetric is nnx.metrics.MultiMetric and nnx.Metric is nnx.metrics.Metric
    metrics = nnx.MultiMetric(loss=nnx.metrics.Average("loss"), acc=nnx.metrics.Accuracy())
    metrics.update(
        loss=jnp.array([1.0, 3.0]), logits=jnp.array([[0.0, 1.0], [1.0, 0.0]]), labels=jnp.array([1, 1])
    )
    assert metrics.compute() == {"loss": 2.0, "acc": 0.5}
