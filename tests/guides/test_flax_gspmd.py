"""The behaviour shown in Flax's `guides/flax_gspmd`, run with `import nnxfn as nnx`.

Each test runs in a subprocess with 8 simulated CPU devices. The guide's
"auto-mode mesh" is built with `AxisType.Auto` explicitly (newer JAX makes
`jax.make_mesh` axes Explicit by default), and depth 64 replaces 1024.
"""

from __future__ import annotations

from multidevice import run_on_8_devices

MODELS = """
from functools import partial
import jax, jax.numpy as jnp, numpy as np, optax
from jax.sharding import PartitionSpec as P, NamedSharding, AxisType
import nnxfn as nnx

auto_mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto, AxisType.Auto))

class DotReluDot(nnx.Module):
    def __init__(self, depth, rngs):
        init_fn = nnx.initializers.lecun_normal()
        self.dot1 = nnx.Linear(depth, depth, use_bias=False, rngs=rngs,
                               kernel_init=nnx.with_partitioning(init_fn, (None, "model")))
        self.w2 = nnx.Param(init_fn(rngs.params(), (depth, depth)), sharding=("model", None))

    def __call__(self, x):
        y = jax.nn.relu(self.dot1(x))
        y = jax.lax.with_sharding_constraint(y, P("data", "model"))
        return jnp.dot(y, self.w2[...])

class MultiDotReluDot(nnx.Module):
    def __init__(self, depth, num_layers, rngs):
        @nnx.vmap(transform_metadata={nnx.PARTITION_NAME: None})
        def create_sublayers(r):
            return DotReluDot(depth, r)
        self.layers = create_sublayers(rngs.fork(split=num_layers))

    def __call__(self, x):
        def scan_over_layers(x, layer):
            return layer(x), None
        x, _ = jax.lax.scan(scan_over_layers, x, self.layers)
        return x
"""


def test_eager_sharding_of_params_and_layers():
    run_on_8_devices(
        MODELS
        + """
nnx.use_eager_sharding(True)
assert nnx.using_eager_sharding()
with nnx.use_eager_sharding(False):
    assert not nnx.using_eager_sharding()
assert nnx.using_eager_sharding()

rngs = nnx.Rngs(0)
with jax.set_mesh(auto_mesh):
    w = nnx.Param(rngs.lecun_normal()((4, 8)), out_sharding=(None, "model"))
    assert w.sharding.spec == P(None, "model"), w.sharding

p = nnx.Param(jnp.ones((4, 4)), out_sharding=(None, "model"), eager_sharding=True, mesh=auto_mesh)
assert p.sharding.spec == P(None, "model")

@jax.jit
def init_sharded_linear(key):
    init_fn = nnx.nn.linear.default_kernel_init
    return nnx.Linear(4, 8, use_bias=False, rngs=nnx.Rngs(key),
                      kernel_init=nnx.with_partitioning(init_fn, (None, "model")))

with jax.set_mesh(auto_mesh):
    linear = init_sharded_linear(rngs())
    assert linear.kernel.sharding.spec == P(None, "model"), linear.kernel.sharding
    x = jax.device_put(jnp.ones((16, 4)), P("data", None))
    y = jax.jit(lambda m, x: m(x))(linear, x)
    assert y.sharding.spec == P("data", "model"), y.sharding
    np.testing.assert_allclose(y, jnp.ones((16, 4)) @ linear.kernel[...], rtol=1e-5)
"""
    )


def test_sharded_training_with_jax_jit_and_checkpoint_restore():
    run_on_8_devices(
        MODELS
        + """
import tempfile, pathlib
import orbax.checkpoint as ocp

@jax.jit
def train_step(model, optimizer, x, y):
    def loss_fn(model):
        return jnp.mean((model(x) - y) ** 2)
    loss, grads = jax.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return model, loss

rngs = nnx.Rngs(0)
with jax.set_mesh(auto_mesh):
    inputs = jax.device_put(rngs.normal((8, 64)), P("data", None))
    labels = jax.device_put(rngs.normal((8, 64)), P("data", None))
    model = MultiDotReluDot(64, 2, rngs=nnx.Rngs(0))
    assert model.layers.dot1.kernel.shape == (2, 64, 64)
    assert model.layers.dot1.kernel.sharding.is_equivalent_to(
        NamedSharding(auto_mesh, P(None, None, "model")), ndim=3)
    assert model.layers.w2.sharding.is_equivalent_to(
        NamedSharding(auto_mesh, P(None, "model", None)), ndim=3)
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    losses = []
    for i in range(5):
        model, loss = train_step(model, optimizer, inputs, labels)
        losses.append(float(loss))
assert losses[-1] < losses[0], losses

sharded_state = nnx.state(model)
path = ocp.test_utils.erase_and_create_empty(pathlib.Path(tempfile.mkdtemp()) / "ckpt")
checkpointer = ocp.StandardCheckpointer()
checkpointer.save(path / "checkpoint_name", sharded_state)
checkpointer.wait_until_finished()

graphdef, abs_state = nnx.get_abstract_model(
    lambda: MultiDotReluDot(64, 2, rngs=nnx.Rngs(0)), auto_mesh)
restored_state = checkpointer.restore(path / "checkpoint_name", target=abs_state)
restored_model = nnx.merge(graphdef, restored_state)
kernel = restored_model.layers.dot1.kernel
assert kernel.shape == (2, 64, 64)
assert kernel.sharding.is_equivalent_to(NamedSharding(auto_mesh, P(None, None, "model")), ndim=3)
np.testing.assert_array_equal(kernel[...], model.layers.dot1.kernel[...])
"""
    )


def test_logical_axis_rules_and_explicit_mesh():
    run_on_8_devices(
        MODELS
        + """
sharding_rules = (("batch", "data"), ("hidden", "model"), ("embed", None))

class LogicalDotReluDot(nnx.Module):
    def __init__(self, depth, rngs):
        init_fn = nnx.initializers.lecun_normal()
        self.dot1 = nnx.Linear(depth, depth, use_bias=False, rngs=rngs,
                               kernel_init=nnx.with_partitioning(init_fn, ("embed", "hidden")))
        self.w2 = nnx.Param(init_fn(rngs.params(), (depth, depth)), sharding=("hidden", "embed"))

    def __call__(self, x):
        y = jax.nn.relu(self.dot1(x))
        y = jax.lax.with_sharding_constraint(y, P("data", None))
        return jnp.dot(y, self.w2[...])

class LogicalMultiDotReluDot(nnx.Module):
    def __init__(self, depth, num_layers, rngs):
        @nnx.vmap(transform_metadata={nnx.PARTITION_NAME: None})
        def create_sublayers(r):
            return LogicalDotReluDot(depth, r)
        self.layers = create_sublayers(rngs.fork(split=num_layers))

    def __call__(self, x):
        x, _ = jax.lax.scan(lambda x, layer: (layer(x), None), x, self.layers)
        return x

rngs = nnx.Rngs(0)
with jax.set_mesh(auto_mesh), nnx.logical_axis_rules(sharding_rules):
    inputs = jax.device_put(rngs.normal((8, 64)), P("data", None))
    logical_model = LogicalMultiDotReluDot(64, 2, rngs=nnx.Rngs(0))
    logical_output = logical_model(inputs)
assert logical_model.layers.dot1.kernel.sharding.is_equivalent_to(
    NamedSharding(auto_mesh, P(None, None, "model")), ndim=3)
assert logical_model.layers.w2.sharding.is_equivalent_to(
    NamedSharding(auto_mesh, P(None, "model", None)), ndim=3)
assert logical_output.sharding.is_equivalent_to(NamedSharding(auto_mesh, P("data", None)), ndim=2)

explicit_mesh = jax.make_mesh((2, 4), ("data", "model"),
                              axis_types=(AxisType.Explicit, AxisType.Explicit))

class ExplicitDotReluDot(nnx.Module):
    def __init__(self, depth, rngs):
        init_fn = nnx.initializers.lecun_normal()
        self.dot1 = nnx.Linear(depth, depth, use_bias=False, rngs=rngs,
                               kernel_init=partial(init_fn, out_sharding=P(None, "model")))
        self.w2 = nnx.Param(init_fn(rngs.params(), (depth, depth), out_sharding=P("model", None)))
        self.b2 = nnx.Param(jnp.zeros((depth,), out_sharding=P(None)))

    def __call__(self, x):
        y = jax.nn.relu(self.dot1(x))
        z = jnp.dot(y, self.w2[...], out_sharding=P("data", None))
        return z + self.b2

class ExplicitMultiDotReluDot(nnx.Module):
    def __init__(self, depth, num_layers, rngs):
        @partial(jax.vmap, spmd_axis_name=None)
        def create_sublayers(r):
            return ExplicitDotReluDot(depth, r)
        self.layers = create_sublayers(rngs.fork(split=num_layers))

    def __call__(self, x):
        x, _ = jax.lax.scan(lambda x, layer: (layer(x), None), x, self.layers)
        return x

x_host = jax.random.normal(jax.random.key(1), (8, 64))
with jax.set_mesh(explicit_mesh):
    model = ExplicitMultiDotReluDot(64, 2, rngs=nnx.Rngs(0))
    x = jax.device_put(x_host, NamedSharding(explicit_mesh, P("data", None)))
    y = model(x)
assert model.layers.dot1.kernel.sharding.spec == P(None, None, "model")
assert model.layers.w2.sharding.spec == P(None, "model", None)
assert x.sharding.is_equivalent_to(y.sharding, ndim=2)

with jax.set_mesh(explicit_mesh):
    abs_model = jax.eval_shape(lambda: ExplicitMultiDotReluDot(64, 2, rngs=nnx.Rngs(0)))
    assert abs_model.layers.dot1.kernel.sharding.spec == P(None, None, "model")
    assert abs_model.layers.w2.sharding.spec == P(None, "model", None)
"""
    )
