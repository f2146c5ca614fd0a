"""The behaviour shown in Flax's `guides/transforms`, run with `import nnxfn as nnx`.

The guide writes `weights.count += 1`; flax 0.12.8 rejects in-place operators on
a Variable attribute, so these tests write `weights.count[...] += 1`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import random

import nnxfn as nnx
from multidevice import run_on_8_devices


class Weights(nnx.Module):
    def __init__(self, kernel: jax.Array, bias: jax.Array):
        self.kernel, self.bias = nnx.Param(kernel), nnx.Param(bias)


class Count(nnx.Variable):
    pass


class CountedWeights(nnx.Module):
    def __init__(self, kernel, bias, count):
        self.kernel, self.bias = nnx.Param(kernel), nnx.Param(bias)
        self.count = Count(count)


def vector_dot(weights, x):
    assert weights.kernel.ndim == 2, "Batch dimensions not allowed"
    assert x.ndim == 1, "Batch dimensions not allowed"
    return x @ weights.kernel + weights.bias


def stateful_vector_dot(weights, x):
    weights.count[...] += 1
    return vector_dot(weights, x)


KERNEL = random.uniform(random.key(0), (10, 2, 3))
X = jax.random.normal(random.key(1), (10, 2))
EXPECTED = jnp.einsum("bi,bio->ob", X, KERNEL)


def test_vmap_over_module_and_out_axes():
    weights = Weights(kernel=KERNEL, bias=jnp.zeros((10, 3)))
    y = nnx.vmap(vector_dot, in_axes=0, out_axes=1)(weights, X)
    assert y.shape == (3, 10)
    np.testing.assert_allclose(y, EXPECTED, rtol=1e-5)


def test_vmap_creates_a_stack_of_modules():
    def create_weights(seed: jax.Array):
        return Weights(kernel=random.uniform(random.key(seed), (2, 3)), bias=jnp.zeros((3,)))

    weights = nnx.vmap(create_weights)(jnp.arange(10))
    assert weights.kernel.shape == (10, 2, 3) and weights.bias.shape == (10, 3)
    np.testing.assert_allclose(weights.kernel[3], random.uniform(random.key(3), (2, 3)))


def test_vmap_decorated_init_and_call():
    class WeightStack(nnx.Module):
        @nnx.vmap
        def __init__(self, seed: jax.Array):
            self.kernel = nnx.Param(random.uniform(random.key(seed), (2, 3)))
            self.bias = nnx.Param(jnp.zeros((3,)))

        @nnx.vmap(in_axes=0, out_axes=1)
        def __call__(self, x: jax.Array):
            assert self.kernel.ndim == 2
            return x @ self.kernel + self.bias

    weights = WeightStack(jnp.arange(10))
    assert weights.kernel.shape == (10, 2, 3)
    y = weights(X)
    assert y.shape == (3, 10)
    np.testing.assert_allclose(y[:, 4], X[4] @ weights.kernel[4], rtol=1e-5)


def test_state_updates_under_vmap_are_written_back():
    weights = CountedWeights(KERNEL, jnp.zeros((10, 3)), jnp.arange(10))
    y = nnx.vmap(stateful_vector_dot, in_axes=0, out_axes=1)(weights, X)
    np.testing.assert_allclose(y, EXPECTED, rtol=1e-5)
    np.testing.assert_array_equal(weights.count[...], jnp.arange(1, 11))


def test_structural_changes_under_vmap_are_committed():
    weights = CountedWeights(KERNEL, jnp.zeros((10, 3)), jnp.arange(10))

    def crazy_vector_dot(weights, x):
        weights.count[...] += 1
        y = x @ weights.kernel + weights.bias
        weights.some_property = ["a", 2, False]
        del weights.bias
        weights.new_param = weights.kernel
        return y

    nnx.vmap(crazy_vector_dot, in_axes=0, out_axes=1)(weights, X)
    assert not hasattr(weights, "bias")
    assert weights.some_property == ["a", 2, False]
    assert weights.new_param is weights.kernel
    assert weights.kernel.shape == (10, 2, 3)
    np.testing.assert_array_equal(weights.count[...], jnp.arange(1, 11))


def test_state_axes_broadcast_count():
    weights = CountedWeights(KERNEL, jnp.zeros((10, 3)), jnp.array(0))
    state_axes = nnx.StateAxes({nnx.Param: 0, Count: None})
    y = nnx.vmap(stateful_vector_dot, in_axes=(state_axes, 0), out_axes=1)(weights, X)
    np.testing.assert_allclose(y, EXPECTED, rtol=1e-5)
    assert int(weights.count[...]) == 1


class NoisyWeights(nnx.Module):
    def __init__(self, kernel, bias, count, seed):
        self.kernel, self.bias = nnx.Param(kernel), nnx.Param(bias)
        self.count = Count(count)
        self.rngs = nnx.Rngs(noise=seed)


def noisy_vector_dot(weights, x):
    weights.count[...] += 1
    y = x @ weights.kernel + weights.bias
    return y + random.normal(weights.rngs.noise(), y.shape)


def test_batched_rng_keys_in_a_module():
    weights = NoisyWeights(
        random.uniform(random.key(0), (2, 3)),
        jnp.zeros((3,)),
        jnp.array(0),
        seed=random.split(random.key(0), num=10),
    )
    state_axes = nnx.StateAxes({nnx.RngState: 0, (nnx.Param, Count): None})
    y1 = nnx.vmap(noisy_vector_dot, in_axes=(state_axes, 0))(weights, X)
    y2 = nnx.vmap(noisy_vector_dot, in_axes=(state_axes, 0))(weights, X)
    assert y1.shape == (10, 3)
    assert not jnp.allclose(y1, y2)  # the counters advanced between calls
    assert not jnp.allclose(y1[0], y1[1])  # each row used its own key
    assert int(weights.count[...]) == 2


def test_split_rngs_decorator_restores_the_key():
    weights = NoisyWeights(random.uniform(random.key(0), (2, 3)), jnp.zeros((3,)), jnp.array(0), seed=0)
    state_axes = nnx.StateAxes({nnx.RngState: 0, (nnx.Param, Count): None})

    @nnx.split_rngs(splits=10)
    @nnx.vmap(in_axes=(state_axes, 0))
    def noisy(weights, x):
        return noisy_vector_dot(weights, x)

    y1 = noisy(weights, X)
    y2 = noisy(weights, X)
    assert y1.shape == (10, 3)
    assert not jnp.allclose(y1, y2)
    assert weights.rngs.noise.key.shape == ()  # unsplit again after the call
    assert int(weights.count[...]) == 2


def test_inconsistent_aliasing_is_an_error():
    class Single(nnx.Module):
        def __init__(self, array):
            self.param = nnx.Param(array)

    m = Single(jnp.arange(10))
    arg1 = {"a": {"b": m}, "c": m}
    arg2 = [(m, m), m]

    @nnx.vmap(in_axes=(0, 1))
    def f(arg1, arg2): ...

    with pytest.raises(ValueError, match="(?i)alias"):
        f(arg1, arg2)

    @nnx.vmap(in_axes=0, out_axes=1)
    def g(arg1):
        return arg1

    with pytest.raises(ValueError, match="(?i)alias"):
        g(arg1)


def test_transform_metadata_moves_the_partition_axis():
    run_on_8_devices("""
        import jax, jax.numpy as jnp
        import nnxfn as nnx

        mesh = jax.make_mesh((1, 1), ("a", "b"))

        class Weights(nnx.Module):
            def __init__(self, array, out_sharding):
                self.param = nnx.Param(array, out_sharding=out_sharding)

        inner = {}

        @nnx.vmap(in_axes=1, transform_metadata={nnx.PARTITION_NAME: "b"})
        def f(m):
            inner["shape"] = m.param.shape
            inner["sharding"] = m.param.out_sharding

        with jax.set_mesh(mesh):
            m = Weights(jnp.ones((3, 4, 5)), out_sharding=("a", "b", None))
            f(m)
        assert inner == {"shape": (3, 5), "sharding": ("a", None)}, inner
        assert m.param.shape == (3, 4, 5) and m.param.out_sharding == ("a", "b", None)

        @nnx.vmap(out_axes=1, axis_size=4, transform_metadata={nnx.PARTITION_NAME: "b"})
        def init_vmap():
            return Weights(jnp.ones((3, 5)), out_sharding=("a", None))

        with jax.set_mesh(mesh):
            m = init_vmap()
        assert m.param.shape == (3, 4, 5), m.param.shape
        assert m.param.out_sharding == ("a", "b", None), m.param.out_sharding
    """)
