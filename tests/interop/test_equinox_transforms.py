"""Point 3: nnxfn Modules are pytrees, so Equinox and JAX utilities work on them."""

import io
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxfn as nnx

KEY = jax.random.key(0)


class Model(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.lin = nnx.Linear(3, 4, rngs=rngs)
        self.ln = eqx.nn.LayerNorm(4)
        self.out = eqx.nn.Linear(4, 2, key=KEY)
        self.count = nnx.BatchStat(jnp.array(0))

    def __call__(self, x):
        return jax.vmap(self.out)(jax.vmap(self.ln)(self.lin(x)))


@pytest.fixture
def model():
    return Model(nnx.Rngs(0))


X = jnp.arange(6.0).reshape(2, 3)


def test_eqx_filter_jit_traces_once_for_repeated_calls(model):
    traces = []

    @eqx.filter_jit
    def f(m, x):
        traces.append(1)
        return m(x)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reading is not a write: no warning
        outs = [f(model, X) for _ in range(4)]
    assert len(traces) == 1
    np.testing.assert_allclose(outs[-1], model(X), rtol=1e-6)
    model.lin.kernel[...] = model.lin.kernel[...] * 2  # a value change: no retrace
    np.testing.assert_allclose(f(model, X), model(X), rtol=1e-6)
    assert len(traces) == 1


def test_eqx_filter_jit_can_return_the_updated_module(model):
    @eqx.filter_jit
    def f(m):
        return eqx.tree_at(lambda m: m.out.weight, m, m.out.weight * 0)

    new = f(model)
    assert isinstance(new, Model) and new is not model
    assert float(jnp.abs(new.out.weight).sum()) == 0.0
    assert float(jnp.abs(model.out.weight).sum()) > 0.0


def test_jax_tree_map_and_sharing(model):
    model.tied = model.lin  # shared sub-module
    doubled = jax.tree.map(lambda x: x * 2, model)
    assert doubled.tied is doubled.lin
    np.testing.assert_allclose(doubled.lin.kernel[...], model.lin.kernel[...] * 2)
    np.testing.assert_allclose(doubled.out.weight, model.out.weight * 2)
    assert len(jax.tree.leaves(model)) == 2 + 2 + 2 + 1  # the shared Linear counted once


def test_filter_grad_and_apply_updates(model):
    loss = lambda m, x: (m(x) ** 2).sum()
    grads = eqx.filter_grad(loss)(model, X)
    assert isinstance(grads, Model)
    ref = nnx.grad(loss)(model, X)
    np.testing.assert_allclose(grads.out.weight, ref["out"]["weight"][...], rtol=1e-5)
    np.testing.assert_allclose(grads.lin.kernel[...], ref["lin"]["kernel"][...], rtol=1e-5)
    assert grads.count[...] is None  # non-differentiable leaves are None, as in Equinox
    updates = jax.tree.map(lambda g: -0.1 * g, grads)
    new = eqx.apply_updates(model, updates)
    np.testing.assert_allclose(new.out.weight, model.out.weight - 0.1 * grads.out.weight, rtol=1e-6)
    assert float(loss(new, X)) < float(loss(model, X))


def test_partition_combine(model):
    params, static = eqx.partition(model, eqx.is_inexact_array)
    assert params.count[...] is None and static.count[...] is not None
    back = eqx.combine(params, static)
    assert isinstance(back, Model)
    np.testing.assert_allclose(back(X), model(X), rtol=1e-6)


def test_filter_vmap_over_inputs_and_models(model):
    xs = jnp.stack([X, X + 1])
    out = eqx.filter_vmap(lambda m, x: m(x), in_axes=(None, 0))(model, xs)
    np.testing.assert_allclose(out[1], model(X + 1), rtol=1e-5)
    ensemble = eqx.filter_vmap(lambda k: Model(nnx.Rngs(k)))(jnp.arange(3))
    assert ensemble.lin.kernel.shape == (3, 3, 4)
    ys = eqx.filter_vmap(lambda m, x: m(x), in_axes=(eqx.if_array(0), None))(ensemble, X)
    assert ys.shape == (3, 2, 2)


def test_tree_at_replaces_leaves_and_submodules(model):
    new = eqx.tree_at(lambda m: m.lin.kernel.value, model, jnp.zeros((3, 4)))
    assert float(jnp.abs(new.lin.kernel[...]).sum()) == 0.0
    assert float(jnp.abs(model.lin.kernel[...]).sum()) > 0.0
    new_ln = eqx.nn.LayerNorm(4, use_weight=False, use_bias=False)
    swapped = eqx.tree_at(lambda m: m.ln, model, new_ln)
    assert swapped.ln.weight is None and model.ln.weight is not None
    h = model.lin(X)
    np.testing.assert_allclose(swapped(X), jax.vmap(swapped.out)(jax.vmap(new_ln)(h)), rtol=1e-6)
    # `is_leaf` sees Equinox sub-modules (they are children of the Module pytree)
    found = jax.tree.leaves(model, is_leaf=lambda x: isinstance(x, eqx.nn.Linear))
    assert sum(isinstance(x, eqx.nn.Linear) for x in found) == 1
    reinit = jax.tree.map(
        lambda x: eqx.tree_at(lambda l: l.bias, x, jnp.ones(2)) if isinstance(x, eqx.nn.Linear) else x,
        model,
        is_leaf=lambda x: isinstance(x, eqx.nn.Linear),
    )
    np.testing.assert_array_equal(reinit.out.bias, jnp.ones(2))


def test_tree_serialise_roundtrip(model):
    buf = io.BytesIO()
    eqx.tree_serialise_leaves(buf, model)
    buf.seek(0)
    fresh = Model(nnx.Rngs(1))
    fresh.count[...] = jnp.array(7)
    loaded = eqx.tree_deserialise_leaves(buf, fresh)
    np.testing.assert_array_equal(loaded.lin.kernel[...], model.lin.kernel[...])
    np.testing.assert_array_equal(loaded.out.weight, model.out.weight)
    assert int(loaded.count[...]) == 0


def test_nnxfn_module_as_field_of_an_equinox_module(model):
    class Wrapper(eqx.Module):
        net: Model
        scale: jax.Array

        def __call__(self, x):
            return self.net(x) * self.scale

    w = Wrapper(model, jnp.array(2.0))
    np.testing.assert_allclose(eqx.filter_jit(lambda w, x: w(x))(w, X), 2 * model(X), rtol=1e-6)
    grads = eqx.filter_grad(lambda w: w(X).sum())(w)
    assert isinstance(grads.net, Model)
    np.testing.assert_allclose(float(grads.scale), float(model(X).sum()), rtol=1e-5)
    # and as an attribute of an nnxfn Module again: its leaves are classified too
    holder = nnx.Dict(w=w)
    types = {p: type(v) for p, v in nnx.state(holder).flat_state()}
    assert types[("w", "scale")] is nnx.Param
    assert types[("w", "net", "lin", "kernel")] is nnx.Param
    assert types[("w", "net", "count")] is nnx.BatchStat
