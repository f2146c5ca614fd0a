"""The behaviour shown in Flax's `key_concepts` guide, run with `import nnxfn as nnx`."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

import nnxfn as nnx
from multidevice import run_on_8_devices


def jax_linear(x, kernel, bias):
    return jnp.dot(x, kernel) + bias


def test_linear_matches_the_plain_jax_function():
    linear = nnx.Linear(in_features=4, out_features=2, rngs=nnx.Rngs(42))
    assert isinstance(linear.kernel, nnx.Param)
    assert isinstance(linear.kernel.value, jax.Array)
    x = jax.random.normal(jax.random.key(0), (2, 4))
    assert jnp.array_equal(linear(x), jax_linear(x, linear.kernel.value, linear.bias.value))


def test_module_flattens_and_unflattens_as_a_pytree():
    linear = nnx.Linear(in_features=4, out_features=2, rngs=nnx.Rngs(42))
    arrays, treedef = jax.tree.flatten_with_path(linear)
    assert len(arrays) == 2
    paths = {jax.tree_util.keystr(kp) for kp, _ in arrays}
    assert any("kernel" in p for p in paths) and any("bias" in p for p in paths)
    rebuilt = jax.tree.unflatten(treedef, [value for _, value in arrays])
    assert isinstance(rebuilt, nnx.Linear)
    x = jnp.ones((3, 4))
    np.testing.assert_allclose(rebuilt(x), linear(x))
    np.testing.assert_allclose(jax.jit(linear)(x), linear(x), rtol=1e-6)


def test_static_attributes_stay_python_and_param_ints_are_traced():
    class Foo(nnx.Module):
        def __init__(self, dim, rngs):
            self.w = nnx.Param(jax.random.normal(rngs.param(), (dim, dim)))
            self.dim = dim
            self.traced_dim = nnx.Param(dim)
            self.rng = rngs

    foo = Foo(4, nnx.Rngs(0))
    leaves = {jax.tree_util.keystr(kp): x for kp, x in jax.tree.flatten_with_path(nnx.state(foo))[0]}
    assert any("traced_dim" in p for p in leaves)
    assert any("count" in p for p in leaves) and any("key" in p for p in leaves)
    seen = {}

    @jax.jit
    def jitted(model):
        seen["dim"] = model.dim
        try:
            bool(model.traced_dim.value == 4)
            seen["error"] = None
        except jax.errors.TracerBoolConversionError as e:
            seen["error"] = e

    jitted(foo)
    assert seen["dim"] == 4 and isinstance(seen["error"], jax.errors.TracerBoolConversionError)


class MLP(nnx.Module):
    def __init__(self, dim, nlayers, rngs):
        self.blocks = nnx.List([nnx.Linear(dim, dim, rngs=rngs) for _ in range(nlayers)])
        self.activation = jax.nn.relu
        self.nlayers = nlayers

    def __call__(self, x):
        for block in self.blocks:
            x = self.activation(block(x))
        return x


def test_jax_eval_shape_of_a_jitted_constructor_is_abstract():
    @partial(jax.jit, static_argnums=(0, 1))
    def init_state(dim, nlayers):
        return MLP(dim, nlayers, nnx.Rngs(0))

    abstract_model = jax.eval_shape(partial(init_state, 8190, 64))
    kernel = abstract_model.blocks[0].kernel.value
    assert isinstance(kernel, jax.ShapeDtypeStruct) and kernel.shape == (8190, 8190)
    assert len(abstract_model.blocks) == 64
    x = jnp.ones(3)
    assert jax.eval_shape(lambda x: x, x) == jax.ShapeDtypeStruct((3,), jnp.float32)


def test_sharded_init_with_sharding_constraint_on_a_module():
    run_on_8_devices("""
        from functools import partial
        import jax, jax.numpy as jnp
        import nnxfn as nnx

        class MLP(nnx.Module):
            def __init__(self, dim, nlayers, rngs):
                self.blocks = nnx.List([nnx.Linear(dim, dim, rngs=rngs) for _ in range(nlayers)])
                self.activation = jax.nn.relu
            def __call__(self, x):
                for block in self.blocks:
                    x = self.activation(block(x))
                return x

        @partial(jax.jit, static_argnums=(0, 1))
        def init_state(dim, nlayers):
            return MLP(dim, nlayers, nnx.Rngs(0))

        dim, nlayers = 64, 2
        abstract_model = jax.eval_shape(partial(init_state, dim, nlayers))
        mesh = jax.make_mesh((jax.device_count(),), "model",
                             axis_types=(jax.sharding.AxisType.Auto,))

        def make_sharding(abs_x):
            spec = (jax.sharding.PartitionSpec(None, "model") if len(abs_x.shape) > 1
                    else jax.sharding.PartitionSpec("model"))
            return jax.sharding.NamedSharding(mesh, spec)

        model_shardings = jax.tree.map(make_sharding, abstract_model)
        assert model_shardings.blocks[0].kernel.value.spec == jax.sharding.PartitionSpec(None, "model")

        @partial(jax.jit, static_argnums=(0, 1))
        def sharded_init(dim, nlayers):
            model = MLP(dim, nlayers, nnx.Rngs(0))
            return jax.lax.with_sharding_constraint(model, model_shardings)

        model = sharded_init(dim, nlayers)
        kernel = model.blocks[0].kernel.value
        assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "model"), kernel.sharding
        assert len(kernel.addressable_shards) == 8
        assert kernel.addressable_shards[0].data.shape == (64, 8)
        plain = init_state(dim, nlayers)
        assert jnp.allclose(model(jnp.ones((1, dim))), plain(jnp.ones((1, dim))), atol=1e-5)
    """)
