"""Flax's override points on the training classes libraries subclass: an Optimizer
subclass overriding `__init__`/`update`, a Metric subclass with its own
`update`/`compute`/`reset`; and `to_opt_state`."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import nnxfn as nnx


class Model(nnx.Module):
    def __init__(self):
        self.w = nnx.Param(jnp.array([1.0, -2.0]))

    def __call__(self, x):
        return jnp.sum(x * self.w)


class ClippingOptimizer(nnx.Optimizer):
    """Clips each gradient to [-limit, limit] and counts the skipped magnitude."""

    def __init__(self, model, tx, limit, *, wrt=nnx.Param):
        super().__init__(model, tx, wrt=wrt)
        self.limit = limit
        self.clipped = nnx.OptState(jnp.array(0.0))

    def update(self, model, grads, **kwargs):
        clipped = jax.tree.map(lambda g: jnp.clip(g, -self.limit, self.limit), grads)
        excess = jax.tree.map(lambda g, c: jnp.abs(g - c).sum(), grads, clipped)
        self.clipped[...] += sum(jax.tree.leaves(excess))
        super().update(model, clipped, **kwargs)


def test_optimizer_subclass_update_inside_jit():
    model = Model()
    opt = ClippingOptimizer(model, optax.sgd(0.5), limit=1.0)

    @nnx.jit
    def train_step(model, opt, x):
        grads = nnx.grad(lambda m: m(x))(model)  # = x
        opt.update(model, grads)

    train_step(model, opt, jnp.array([3.0, 0.5]))
    np.testing.assert_allclose(model.w[...], [1.0 - 0.5 * 1.0, -2.0 - 0.5 * 0.5])
    assert float(opt.clipped[...]) == 2.0 and int(opt.step[...]) == 1
    assert opt.limit == 1.0 and opt.graph is None
    train_step(model, opt, jnp.array([-4.0, 0.0]))
    np.testing.assert_allclose(model.w[...], [0.5 + 0.5, -2.25])
    assert float(opt.clipped[...]) == 5.0 and int(opt.step[...]) == 2


class Max(nnx.Metric):
    """The largest value seen."""

    def __init__(self, argname: str = "values"):
        self.argname = argname
        self.best = nnx.metrics.MetricState(jnp.array(-jnp.inf))

    def reset(self):
        self.best[...] = jnp.array(-jnp.inf)

    def update(self, **kwargs):
        self.best[...] = jnp.maximum(self.best[...], jnp.max(kwargs[self.argname]))

    def compute(self):
        return self.best[...]


def test_metric_subclass_in_multimetric_and_jit():
    metrics = nnx.MultiMetric(loss=nnx.metrics.Average("loss"), peak=Max("loss"))

    @nnx.jit
    def record(metrics, loss):
        metrics.update(loss=loss)

    record(metrics, jnp.array([1.0, 3.0]))
    record(metrics, jnp.array([2.0]))
    out = metrics.compute()
    assert float(out["peak"]) == 3.0 and float(out["loss"]) == 2.0
    metrics.reset()
    assert float(metrics.compute()["peak"]) == -np.inf


def test_to_opt_state_mirrors_variables():
    w = nnx.Param(jnp.ones(2), out_sharding=("model",), optimizer_sharding=("data",))
    out = nnx.training.optimizer.to_opt_state({"w": w, "step": jnp.zeros(())})
    assert type(out["w"]) is nnx.OptVariable and type(out["step"]) is nnx.OptArray
    assert out["w"].out_sharding == ("data",)  # optimizer_sharding wins for the moments
    np.testing.assert_allclose(out["w"][...], [1.0, 1.0])
    assert out["w"] is not w
