"""The behaviour shown in Flax's `guides/view`, run with `import nnxfn as nnx`."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax

import nnxfn as nnx


class MyModel(nnx.Module):
    def __init__(self, in_dim, hidden_dim, out_dim, dropout_rate, *, rngs: nnx.Rngs):
        self.lin1 = nnx.Linear(in_dim, hidden_dim, rngs=rngs)
        self.do = nnx.Dropout(dropout_rate)
        self.bn = nnx.BatchNorm(hidden_dim, rngs=rngs)
        self.lin2 = nnx.Linear(hidden_dim, out_dim, rngs=rngs)

    def __call__(self, x, *, rngs=None):
        x = nnx.relu(self.do(self.bn(self.lin1(x)), rngs=rngs))
        return self.lin2(x)


class NoisyLinear(nnx.Module):
    def __init__(self, din, dout, *, training=None, rngs: nnx.Rngs):
        self.linear = nnx.Linear(din, dout, rngs=rngs)
        self.training = training

    def __call__(self, x, rngs=None):
        assert self.training is not None
        x = self.linear(x)
        if self.training:
            x = x + rngs.normal(x.shape) * 0.1
        return x


def test_view_sets_modes_and_shares_weights():
    rngs = nnx.Rngs(0)
    model = nnx.Sequential(nnx.Linear(2, 4, rngs=rngs), nnx.BatchNorm(4, rngs=rngs), nnx.Dropout(0.1))
    train_model = nnx.view(model, deterministic=False, use_running_average=False)
    eval_model = nnx.view(model, deterministic=True, use_running_average=True)
    assert train_model.layers[2].deterministic is False
    assert eval_model.layers[2].deterministic is True
    assert train_model.layers[1].use_running_average is False
    assert train_model.layers[0].kernel is eval_model.layers[0].kernel
    assert model.layers[2].deterministic is False  # the original is untouched

    info = nnx.view_info(model)
    text = str(info)
    assert "BatchNorm" in text and "use_running_average" in text
    assert "Dropout" in text and "deterministic" in text


def test_train_and_eval_views_share_training_progress():
    in_dim, hidden_dim, out_dim = 16, 32, 2
    rngs = nnx.Rngs(0)
    model = MyModel(in_dim, hidden_dim, out_dim, 0.1, rngs=rngs)
    assert model.do.deterministic is False
    x, y = rngs.normal((64, in_dim)), rngs.normal((64, out_dim))

    @nnx.jit
    def train_step(model, optimizer, x, y, rngs):
        def loss_fn(model, rngs):
            return ((model(x, rngs=rngs) - y) ** 2).mean()

        grads = nnx.grad(loss_fn)(model, rngs)
        optimizer.update(model, grads)

    @nnx.jit
    def eval_step(model, x, y):
        return ((model(x) - y) ** 2).mean()

    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    train_model = nnx.view(model, deterministic=False)
    eval_model = nnx.view(model, deterministic=True)
    assert train_model.lin1.kernel is eval_model.lin1.kernel
    losses = [float(eval_step(eval_model, x, y))]
    for _ in range(10):
        train_step(train_model, optimizer, x, y, rngs)
        losses.append(float(eval_step(eval_model, x, y)))
    assert losses[-1] < losses[0]
    np.testing.assert_array_equal(model.lin1.kernel[...], eval_model.lin1.kernel[...])
    assert float(jnp.abs(model.bn.mean[...]).sum()) > 0  # batch stats updated via the view


def test_custom_set_view_and_its_info():
    printed = []

    class PrintLayer(nnx.Module):
        def __init__(self, msg: str | None = None):
            self.msg = msg

        def __call__(self, *args, **kwargs):
            if self.msg:
                printed.append(self.msg)

        def set_view(self, msg: bool | None = None):
            """Example set_view docstring.

            Args:
              msg: bool indicating if a message should be printed.
            """
            if msg is not None:
                self.msg = msg

    model = PrintLayer()
    model_print = nnx.view(model, msg="Hello, World!")
    model()
    model_print()
    assert printed == ["Hello, World!"]
    text = str(nnx.view_info(model))
    assert "PrintLayer" in text and "msg" in text


def test_with_vars_ref_only_params():
    class SimpleModel(nnx.Module):
        def __init__(self, rngs):
            self.linear = nnx.Linear(2, 3, rngs=rngs)
            self.stat = nnx.BatchStat(jnp.zeros(3))

    model = SimpleModel(nnx.Rngs(0))
    ref_params = nnx.with_vars(model, ref=True, only=nnx.Param)
    assert ref_params.linear.kernel is not model.linear.kernel
    assert ref_params.linear.kernel.ref is True
    assert ref_params.stat is model.stat  # not converted
    np.testing.assert_array_equal(ref_params.linear.kernel[...], model.linear.kernel[...])


def test_with_attributes_sets_a_flag_on_every_submodule():
    rngs = nnx.Rngs(0)
    model = nnx.Sequential(NoisyLinear(4, 8, rngs=rngs), NoisyLinear(8, 2, rngs=rngs))
    train_model = nnx.with_attributes(model, training=True)
    eval_model = nnx.with_attributes(model, training=False)
    assert train_model.layers[0].training is True and eval_model.layers[1].training is False
    assert model.layers[0].training is None
    x = jnp.ones((1, 4))
    y1 = train_model(x, rngs=rngs)
    y2 = eval_model(x)
    clean = model.layers[1].linear(model.layers[0].linear(x))
    np.testing.assert_allclose(y2, clean, rtol=1e-6)
    assert not np.allclose(y1, clean)


def test_recursive_map_wraps_linears_built_with_eval_shape():
    def add_noise(path, node):
        if isinstance(node, nnx.Linear):
            noisy = nnx.eval_shape(lambda: NoisyLinear(node.in_features, node.out_features, rngs=nnx.Rngs(0)))
            noisy.linear = node
            noisy.training = False
            return noisy
        return node

    rngs = nnx.Rngs(0)
    model = nnx.Sequential(nnx.Linear(4, 8, rngs=rngs), nnx.Linear(8, 2, rngs=rngs))
    noisy_model = nnx.recursive_map(add_noise, model)
    assert all(isinstance(layer, NoisyLinear) for layer in noisy_model.layers)
    np.testing.assert_array_equal(noisy_model.layers[0].linear.kernel[...], model.layers[0].kernel[...])
    y = noisy_model(jnp.ones((1, 4)))
    np.testing.assert_allclose(y, model(jnp.ones((1, 4))), rtol=1e-6)
