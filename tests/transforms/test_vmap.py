"""`nnx.vmap` / `nnx.pmap`: axes of module state, commits, rngs, why_nnx.md examples."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import random

import nnxfn as nnx
from tx_models import (
    MLP,
    Boom,
    Counter,
    Dropoutish,
    Linear,
    assert_unchanged,
    key_data,
    mlp_apply,
    mlp_params,
    snapshot,
)

B = 4


# -- why_nnx.md "Transforms" examples, exactly as written ----------------------------
class Weights(nnx.Module):
    def __init__(self, kernel: jax.Array, bias: jax.Array):
        self.kernel, self.bias = nnx.Param(kernel), nnx.Param(bias)


def create_weights(seed: jax.Array):
    return Weights(
        kernel=random.uniform(random.key(seed), (2, 3)),
        bias=jnp.zeros((3,)),
    )


def vector_dot(weights: Weights, x: jax.Array):
    assert weights.kernel.ndim == 2, "Batch dimensions not allowed"
    assert x.ndim == 1, "Batch dimensions not allowed"
    return x @ weights.kernel + weights.bias


def test_why_nnx_create_weights_vector_dot():
    seeds = jnp.arange(10)
    weights = nnx.vmap(create_weights, in_axes=0, out_axes=0)(seeds)
    x = jax.random.normal(random.key(1), (10, 2))
    y = nnx.vmap(vector_dot, in_axes=(0, 0), out_axes=1)(weights, x)

    assert isinstance(weights, Weights) and isinstance(weights.kernel, nnx.Param)
    want_k = jax.vmap(lambda s: random.uniform(random.key(s), (2, 3)))(seeds)
    np.testing.assert_allclose(weights.kernel[...], want_k)
    np.testing.assert_allclose(weights.bias[...], jnp.zeros((10, 3)))
    want_y = jax.vmap(lambda k, b, x: x @ k + b, out_axes=1)(want_k, jnp.zeros((10, 3)), x)
    assert y.shape == (3, 10)
    np.testing.assert_allclose(y, want_y, rtol=1e-6)


class WeightStack(nnx.Module):
    @nnx.vmap(in_axes=(0, 0), out_axes=0)
    def __init__(self, seed: jax.Array):
        self.kernel = nnx.Param(random.uniform(random.key(seed), (2, 3)))
        self.bias = nnx.Param(jnp.zeros((3,)))

    @nnx.vmap(in_axes=(0, 0), out_axes=1)
    def __call__(self, x: jax.Array):
        assert self.kernel.ndim == 2, "Batch dimensions not allowed"
        assert x.ndim == 1, "Batch dimensions not allowed"
        return x @ self.kernel + self.bias


def test_why_nnx_weight_stack():
    weights = WeightStack(jnp.arange(10))
    x = jax.random.normal(random.key(1), (10, 2))
    y = weights(x)

    want_k = jax.vmap(lambda s: random.uniform(random.key(s), (2, 3)))(jnp.arange(10))
    assert weights.kernel.shape == (10, 2, 3) and weights.bias.shape == (10, 3)
    np.testing.assert_allclose(weights.kernel[...], want_k)
    assert y.shape == (3, 10)
    np.testing.assert_allclose(y, jnp.einsum("bi,bio->ob", x, want_k), rtol=1e-5)


# -- plain arrays, module args, axes --------------------------------------------------------
def test_plain_arrays_match_jax_vmap():
    def f(x, y):
        return x * y.sum(), jnp.sin(x)

    x, y = jnp.arange(12.0).reshape(4, 3), jnp.ones((3, 4))
    got = nnx.vmap(f, in_axes=(0, 1), out_axes=(0, 1))(x, y)
    want = jax.vmap(f, in_axes=(0, 1), out_axes=(0, 1))(x, y)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b)


def test_broadcast_module_over_batch_matches_plain():
    m = MLP(2, 8, 3, rngs=nnx.Rngs(0))
    x = jnp.linspace(-1, 1, 2 * B).reshape(B, 2)
    y = nnx.vmap(lambda m, x: m(x), in_axes=(None, 0))(m, x)
    want = jax.vmap(mlp_apply, in_axes=(None, 0))(mlp_params(m), x)
    np.testing.assert_allclose(y, want, rtol=1e-6)


def test_ensemble_of_stacked_modules_matches_plain():
    rngs = nnx.Rngs(0)
    ens = nnx.vmap(lambda r: MLP(2, 4, 1, rngs=r), in_axes=None, out_axes=0, axis_size=B)(rngs)
    # axis None rngs: every member is initialised from the same keys
    k = ens.l1.kernel[...]
    assert k.shape == (B, 2, 4)
    np.testing.assert_allclose(k[0], k[1])
    x = jnp.ones((3, 2))
    y = nnx.vmap(lambda m, x: m(x), in_axes=(0, None))(ens, x)
    want = jax.vmap(mlp_apply, in_axes=(0, None))(mlp_params(ens), x)
    assert y.shape == (B, 3, 1)
    np.testing.assert_allclose(y, want, rtol=1e-6)


def test_broadcast_module_counter_write_committed_once():
    class Tick(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.ones(3))
            self.calls = nnx.BatchStat(jnp.array(0))

        def __call__(self, x):
            self.calls[...] = self.calls[...] + 1
            return x * self.w

    m = Tick()
    y = nnx.vmap(lambda m, x: m(x), in_axes=(None, 0))(m, jnp.ones((B, 3)))
    assert y.shape == (B, 3)
    assert int(m.calls[...]) == 1 and m.calls.shape == ()


def test_mapped_module_state_updated_per_element():
    stack = nnx.vmap(lambda _: Counter(), in_axes=0, out_axes=0)(jnp.arange(B))
    assert stack.count.shape == (B,)
    xs = jnp.arange(B * 3.0).reshape(B, 3)
    y = nnx.vmap(lambda m, x: m(x))(stack, xs)
    np.testing.assert_allclose(y, xs * jnp.arange(1.0, 4.0))
    np.testing.assert_array_equal(stack.count[...], jnp.ones(B))
    np.testing.assert_allclose(stack.total[...], xs)


def test_state_axes_mapped_params_broadcast_counter():
    class Ens(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.arange(B * 3.0).reshape(B, 3))  # stacked
            self.calls = nnx.BatchStat(jnp.array(0))  # shared by all members

        def __call__(self, x):
            self.calls[...] = self.calls[...] + 1
            return (x * self.w).sum()

    m = Ens()
    axes = nnx.StateAxes({nnx.Param: 0, ...: None})
    y = nnx.vmap(lambda m, x: m(x), in_axes=(axes, None))(m, jnp.ones(3))
    np.testing.assert_allclose(y, m.w[...].sum(1))
    assert int(m.calls[...]) == 1
    assert m.w.shape == (B, 3)


def test_state_axes_missing_filter_raises():
    axes = nnx.StateAxes({nnx.Param: 0})
    with pytest.raises(ValueError, match=r"no filter matches.*\.\.\.: None"):
        nnx.vmap(lambda m, x: m(x), in_axes=(axes, 0))(Counter(), jnp.ones((B, 3)))


def test_out_axes_for_arrays_and_new_modules():
    f = nnx.vmap(
        lambda s: (Weights(jnp.full((2, 3), s), jnp.full((3,), s)), s * 2.0), in_axes=0, out_axes=(1, 0)
    )
    w, d = f(jnp.arange(5.0))
    assert w.kernel.shape == (2, 5, 3) and w.bias.shape == (3, 5)
    np.testing.assert_allclose(w.bias[...][:, 4], jnp.full(3, 4.0))
    np.testing.assert_allclose(d, jnp.arange(5.0) * 2)


def test_axis_name_psum():
    m = Counter()
    xs = jnp.arange(B * 3.0).reshape(B, 3)
    f = nnx.vmap(lambda m, x: x / jax.lax.psum((x * m.w).sum(), "b"), in_axes=(None, 0), axis_name="b")
    want = jax.vmap(lambda x: x / jax.lax.psum((x * m.w[...]).sum(), "b"), axis_name="b")(xs)
    np.testing.assert_allclose(f(m, xs), want, rtol=1e-6)


# -- containers, sharing, structure ----------------------------------------------------------
def test_modules_in_list_and_dict_with_per_arg_axes():
    a = Counter()
    stack = nnx.vmap(lambda _: Counter(), out_axes=0)(jnp.arange(B))

    def f(ms, d, x):
        ms[0].count[...] = ms[0].count[...] + 1  # same for every element: fine
        return x * ms[0].w + d["s"](x)

    y = nnx.vmap(f, in_axes=([None], {"s": 0}, 0))([a], {"s": stack}, jnp.ones((B, 3)))
    np.testing.assert_allclose(y, jnp.tile(2 * jnp.arange(1.0, 4.0), (B, 1)))
    np.testing.assert_array_equal(stack.count[...], jnp.ones(B))
    assert int(a.count[...]) == 1


def test_batched_write_to_broadcast_state_raises_with_path():
    a = Counter()
    before = snapshot(a)
    with pytest.raises(ValueError, match=r"wrote args\[0\]\.total.*broadcast with in_axes None"):
        nnx.vmap(lambda m, x: m(x), in_axes=(None, 0))(a, jnp.ones((B, 3)))
    assert_unchanged(before, a)
    # JAX's own phrase (what Flax shows) leads the message, with the key path
    with pytest.raises(
        ValueError, match=r"at vmap args\[0\]\['total'\], got axis spec None but output was batched on axis 0"
    ):
        nnx.vmap(lambda m, x: m(x), in_axes=(None, 0))(a, jnp.ones((B, 3)))


def test_shared_module_across_args_and_returned():
    shared = Counter()

    class Holder(nnx.Module):
        def __init__(self, sub):
            self.sub = sub

    h1, h2 = Holder(shared), Holder(shared)
    seen = {}

    def f(h1, h2, x):
        seen["same"] = h1.sub is h2.sub
        return h1, x * h2.sub.w

    out, y = nnx.vmap(f, in_axes=(None, None, 0), out_axes=(None, 0))(h1, h2, jnp.ones((B, 3)))
    assert seen["same"] and out is h1 and h1.sub is h2.sub is shared
    np.testing.assert_allclose(y, jnp.tile(jnp.arange(1.0, 4.0), (B, 1)))


def test_attribute_added_inside_vmap_is_committed_with_axis():
    stack = nnx.vmap(lambda _: Counter(), out_axes=0)(jnp.arange(B))

    def f(m, x):
        m.extra = nnx.BatchStat(x * 2)

    nnx.vmap(f)(stack, jnp.arange(B * 3.0).reshape(B, 3))
    assert stack.extra.shape == (B, 3)
    np.testing.assert_allclose(stack.extra[...], 2 * jnp.arange(B * 3.0).reshape(B, 3))

    g = nnx.vmap(f, in_axes=(0, 0), out_axes=0)
    stack2 = nnx.vmap(lambda _: Counter(), out_axes=0)(jnp.arange(B))
    g(stack2, jnp.ones((3, B)).T)
    np.testing.assert_allclose(stack2.extra[...], 2 * jnp.ones((B, 3)))


# -- rngs ------------------------------------------------------------------------------------------
def test_dropout_same_keys_per_element_without_split_rngs():
    """Default: an Rngs broadcast (axis None) gives every batch element the same key."""
    m = Dropoutish(0.5, rngs=nnx.Rngs(dropout=0))
    y = nnx.vmap(lambda m, x: m(x), in_axes=(None, 0))(m, jnp.ones((B, 32)))
    for i in range(1, B):
        np.testing.assert_array_equal(y[0], y[i])
    assert int(m.rngs.dropout.count[...]) == 1
    assert not np.all(y[0] == y[0][0])  # it is a real mask


def test_dropout_different_keys_per_element_with_split_rngs():
    """`@nnx.split_rngs(splits=B)` + `StateAxes({nnx.RngState: 0, ...: None})`: one key per element."""
    m = Dropoutish(0.5, rngs=nnx.Rngs(dropout=0))
    key_before = key_data(m.rngs.dropout.key[...])
    axes = nnx.StateAxes({nnx.RngState: 0, ...: None})

    @nnx.split_rngs(splits=B)
    @nnx.vmap(in_axes=(axes, 0))
    def f(m, x):
        return m(x)

    y = f(m, jnp.ones((B, 32)))
    rows = {tuple(np.asarray(r)) for r in y}
    assert len(rows) == B
    # keys restored (not split) afterwards, the stream advanced by one draw
    np.testing.assert_array_equal(key_data(m.rngs.dropout.key[...]), key_before)
    assert m.rngs.dropout.count.shape == ()
    assert int(m.rngs.dropout.count[...]) == 1
    y2 = f(m, jnp.ones((B, 32)))
    assert not np.array_equal(y, y2)


def test_rngs_passed_mapped_after_split_match_reference():
    rngs = nnx.Rngs(3)
    with nnx.split_rngs(rngs, splits=B):
        keys = rngs.default.key[...]
        assert keys.shape == (B,)
        out = nnx.vmap(lambda r: r(), in_axes=0)(rngs)
    want = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
    np.testing.assert_array_equal(key_data(out), key_data(want))
    assert rngs.default.key.shape == ()


def test_captured_rngs_in_vmap_raises():
    rngs = nnx.Rngs(0)
    before = snapshot(rngs)
    with pytest.raises(RuntimeError, match=r"nnx.vmap.*Pass it as an argument"):
        nnx.vmap(lambda x: x + jax.random.normal(rngs(), ()))(jnp.ones(B))
    assert_unchanged(before, rngs)


# -- exceptions ---------------------------------------------------------------------------------------
def test_exception_inside_vmap_leaves_caller_unchanged():
    stack = nnx.vmap(lambda _: Counter(), out_axes=0)(jnp.arange(B))
    rngs = nnx.Rngs(0)
    before = snapshot(stack, rngs)

    def f(m, rngs, x):
        m(x)
        rngs()
        m.extra = nnx.Param(x)
        raise Boom()

    with pytest.raises(Boom):
        nnx.vmap(f, in_axes=(0, None, 0))(stack, rngs, jnp.ones((B, 3)))
    assert_unchanged(before, stack, rngs)


def test_in_axes_length_mismatch_error():
    with pytest.raises(ValueError, match="in_axes has 1 entries but the function got 2"):
        nnx.vmap(lambda a, b: a, in_axes=(0,))(jnp.ones(2), jnp.ones(2))


# -- composition, pmap -------------------------------------------------------------------------------
def test_jit_of_vmap_and_vmap_of_grad():
    stack = nnx.vmap(lambda r: Linear(3, 2, rngs=r), in_axes=None, axis_size=B)(nnx.Rngs(0))
    x = jnp.ones((B, 3))
    y = nnx.jit(nnx.vmap(lambda m, x: m(x)))(stack, x)
    np.testing.assert_allclose(y, jnp.einsum("bi,bio->bo", x, stack.kernel[...]) + stack.bias[...], rtol=1e-6)
    g = nnx.vmap(nnx.grad(lambda m, x: m(x).sum()))(stack, x)
    np.testing.assert_allclose(g["kernel"][...], jnp.ones((B, 3, 2)))
    np.testing.assert_allclose(g["bias"][...], jnp.ones((B, 2)))


def test_pmap_one_device():
    n = jax.local_device_count()
    stack = nnx.vmap(lambda _: Counter(), out_axes=0)(jnp.arange(n))
    xs = jnp.ones((n, 3))
    y = nnx.pmap(lambda m, x: m(x), axis_name="d")(stack, xs)
    np.testing.assert_allclose(y, jnp.tile(jnp.arange(1.0, 4.0), (n, 1)))
    np.testing.assert_array_equal(stack.count[...], jnp.ones(n))
    s = nnx.pmap(lambda m, x: jax.lax.psum(m(x), "d"), axis_name="d", in_axes=(None, 0))(Counter(), xs)
    np.testing.assert_allclose(s[0], n * jnp.arange(1.0, 4.0))


def test_nnx_prefix_as_out_axes_for_a_returned_argument():
    class Env(nnx.Module):
        def __init__(self):
            self.shared = nnx.Param(jnp.array(1.0))
            self.step = nnx.BatchStat(jnp.zeros((B,)))

    for graph in (True, False):
        env = Env()
        axes = nnx.prefix(env, {nnx.Param: None, nnx.BatchStat: 0}, graph=graph)

        def f(env, x):
            env.step[...] += x * env.shared[...]
            return env

        out = nnx.vmap(f, in_axes=(axes, 0), out_axes=axes)(env, jnp.arange(1.0, B + 1))
        assert out is env
        np.testing.assert_allclose(env.step[...], jnp.arange(1.0, B + 1))
        assert float(env.shared[...]) == 1.0
