"""The behaviour shown in Flax's `guides/optimization_cookbook`, run with `import nnxfn as nnx`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import nnxfn as nnx
from multidevice import run_on_8_devices

lecun_normal = jax.nn.initializers.lecun_normal()


def make_model(rngs, init=lecun_normal):
    return nnx.Sequential(
        nnx.Linear(2, 8, rngs=rngs, kernel_init=init),
        nnx.Linear(8, 8, rngs=rngs, kernel_init=init),
    )


def loss_fn(model, x, y):
    return jnp.mean((model(x) - y) ** 2)


def data():
    rngs = nnx.Rngs(0)
    return rngs, rngs.normal((32, 2)), rngs.normal((32, 8))


def test_ema_model_tracks_the_trained_weights():
    rngs, x, y = data()
    model = make_model(rngs)
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    ema = nnx.EMA(model, decay=0.9)
    ema_model = ema.apply_to(model)
    w0 = np.asarray(model.layers[0].kernel[...])

    @nnx.jit
    def train_step(model, optimizer, ema, x, y):
        loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
        optimizer.update(model, grads)
        ema.update(model)

    @nnx.jit
    def eval_step(model, x, y):
        return loss_fn(model, x, y)

    history = [w0]
    for _ in range(5):
        train_step(model, optimizer, ema, x, y)
        history.append(np.asarray(model.layers[0].kernel[...]))
    expected = history[0]
    for w in history[1:]:
        expected = 0.9 * expected + 0.1 * w
    np.testing.assert_allclose(ema_model.layers[0].kernel[...], expected, rtol=1e-5, atol=1e-6)
    assert np.isfinite(float(eval_step(ema_model, x, y)))


def test_lora_via_recursive_map_trains_only_lora_params():
    rngs, x, y = data()

    def add_rank2_lora(path, node):
        if isinstance(node, nnx.Linear):
            return nnx.LoRA(node.in_features, 2, node.out_features, base_module=node, rngs=rngs)
        return node

    model = nnx.recursive_map(add_rank2_lora, make_model(rngs))
    assert all(isinstance(layer, nnx.LoRA) for layer in model.layers)
    base_kernel = np.asarray(model.layers[0].base_module.kernel[...])
    lora_b = np.asarray(model.layers[0].lora_b[...])
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.LoRAParam)

    @nnx.jit
    def train_step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
        optimizer.update(model, grads)
        return loss

    losses = [float(train_step(model, optimizer, x, y)) for _ in range(10)]
    assert losses[-1] < losses[0]
    np.testing.assert_array_equal(model.layers[0].base_module.kernel[...], base_kernel)
    assert not np.allclose(model.layers[0].lora_b[...], lora_b)


def test_lbfgs_with_extra_update_arguments():
    rngs, x, y = data()
    model = make_model(rngs)
    optimizer = nnx.Optimizer(model, optax.lbfgs(1e-3), wrt=nnx.Param)

    def train_step(model, optimizer, x, y):
        graphdef = nnx.graphdef(model)
        loss_fn_state = lambda state: loss_fn(nnx.merge(graphdef, state), x, y)
        loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
        optimizer.update(model, grads, grad=grads, value=loss, value_fn=loss_fn_state)
        return loss

    losses = [float(train_step(model, optimizer, x, y)) for _ in range(5)]
    assert losses[-1] < losses[0]


def test_per_parameter_learning_rates_with_map_state():
    rngs, x, y = data()
    model = make_model(rngs)
    state = nnx.state(model, nnx.Param)
    rates = {"kernel": optax.sgd(1e-2), "bias": optax.set_to_zero()}
    param_tys = nnx.map_state(lambda p, v: list(p)[-1], state)
    assert param_tys["layers"][0]["kernel"] == "kernel"
    optimizer = nnx.Optimizer(model, tx=optax.partition(rates, param_tys), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
        optimizer.update(model, grads)
        return loss

    bias = np.asarray(model.layers[0].bias[...])
    kernel = np.asarray(model.layers[0].kernel[...])
    train_step(model, optimizer, x, y)
    np.testing.assert_array_equal(model.layers[0].bias[...], bias)  # frozen by set_to_zero
    assert not np.allclose(model.layers[0].kernel[...], kernel)


def test_gradient_accumulation_with_multisteps():
    rngs, x, y = data()
    model = make_model(rngs)
    optimizer = nnx.Optimizer(model, optax.MultiSteps(optax.adam(1e-3), every_k_schedule=3), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
        optimizer.update(model, grads)
        return loss

    kernel = np.asarray(model.layers[1].kernel[...])
    train_step(model, optimizer, x, y)
    train_step(model, optimizer, x, y)
    np.testing.assert_array_equal(model.layers[1].kernel[...], kernel)  # still accumulating
    train_step(model, optimizer, x, y)
    assert not np.allclose(model.layers[1].kernel[...], kernel)


def test_optimizer_state_sharding_from_variable_metadata():
    run_on_8_devices("""
        import jax, jax.numpy as jnp, optax
        import nnxfn as nnx
        from jax.sharding import PartitionSpec as P, AxisType, reshard

        lecun_normal = jax.nn.initializers.lecun_normal()
        mesh = jax.make_mesh((2, 4), ("x", "y"), axis_types=(AxisType.Explicit, AxisType.Explicit))
        jax.set_mesh(mesh)
        rngs = nnx.Rngs(0)
        x, y = rngs.normal((32, 2)), rngs.normal((32, 8))
        sharded_init = nnx.with_metadata(lecun_normal, optimizer_sharding=P("x", "y"))
        model = nnx.Sequential(nnx.Linear(2, 8, rngs=rngs, kernel_init=sharded_init),
                               nnx.Linear(8, 8, rngs=rngs, kernel_init=sharded_init))
        optimizer = nnx.Optimizer(model, tx=optax.adam(1e-3), wrt=nnx.Param)

        @nnx.jit
        def train_step(model, optimizer, x, y):
            loss, grads = nnx.value_and_grad(
                lambda m: jnp.mean((m(x) - y) ** 2))(model)
            optimizer.update(model, grads)
            return loss

        losses = []
        for _ in range(3):
            losses.append(float(train_step(model, optimizer, x, y)))
            model = reshard(model, P(None, None))
        assert losses[-1] < losses[0], losses
        mu = optimizer.opt_state[0][1].layers[0]["kernel"][...]
        assert jax.typeof(mu).sharding.spec == P("x", "y"), jax.typeof(mu)
        assert jax.typeof(model.layers[0].kernel[...]).sharding.spec == P(None, None)
    """)
