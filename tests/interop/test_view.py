"""Point 4: the explicit functional view `as_pytree`/`from_pytree`/`update`."""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxfn as nnx

KEY = jax.random.key(0)


class Tied(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.embed = nnx.Linear(4, 4, rngs=rngs)
        self.decode = self.embed  # tied weights: the same Linear twice
        self.enc = eqx.nn.Linear(4, 4, key=KEY)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
        return self.drop(self.decode(self.bn(jax.vmap(self.enc)(self.embed(x)))))


X = jnp.arange(8.0).reshape(2, 4)


def test_tied_weights_survive_as_pytree_from_pytree():
    model = Tied(nnx.Rngs(0))
    view = nnx.as_pytree(model)
    assert isinstance(view, nnx.interop.PytreeView)
    graphdef, state = view
    assert "decode" in state and "embed" not in state  # one leaf (first path) for the shared Linear
    leaves = jax.tree.leaves(view)
    assert len(leaves) == len(jax.tree.leaves(nnx.state(model)))
    back = nnx.from_pytree(view)
    assert back.decode is back.embed and back is not model
    back.embed.kernel[...] = jnp.zeros((4, 4))
    assert float(jnp.abs(back.decode.kernel[...]).sum()) == 0.0
    assert float(jnp.abs(model.embed.kernel[...]).sum()) > 0.0  # a copy, not a view
    again = nnx.from_pytree(jax.tree.map(lambda x: x, view))
    assert again.decode is again.embed
    assert type(again.enc) is eqx.nn.Linear


def test_view_is_frozen_and_hashable_structure():
    view = nnx.as_pytree(Tied(nnx.Rngs(0)))
    with pytest.raises(AttributeError, match="immutable"):
        view.state = None
    _, treedef = jax.tree.flatten(view)
    hash(treedef)
    with pytest.raises(TypeError, match="as_pytree"):
        nnx.from_pytree((view.graphdef, view.state))


def test_view_through_eqx_filter_jit_and_update_commits_back():
    model = Tied(nnx.Rngs(0))
    model.train()
    traces = []

    @eqx.filter_jit
    def step(view, x):
        traces.append(1)
        m = nnx.from_pytree(view)
        y = m(x)  # Dropout draws a key, BatchNorm updates its statistics
        return y, nnx.as_pytree(m)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the functional view never warns
        view = nnx.as_pytree(model)
        y1, view = step(view, X)
        y2, view = step(view, X)
    assert len(traces) == 1
    assert not np.allclose(y1, y2)  # a new dropout mask per call
    mean0 = np.asarray(model.bn.mean[...])
    count0 = int(model.drop.rngs.count[...])
    nnx.update(model, view)
    assert int(model.drop.rngs.count[...]) == count0 + 2
    assert not np.allclose(model.bn.mean[...], mean0)
    assert model.decode is model.embed


def test_view_grads_with_eqx_filter_grad_and_update():
    model = Tied(nnx.Rngs(0))
    model.eval()
    view = nnx.as_pytree(model)
    loss = lambda v: (nnx.from_pytree(v)(X) ** 2).mean()
    grads = eqx.filter_grad(loss)(view)
    ref = nnx.grad(lambda m: (m(X) ** 2).mean())(model)
    np.testing.assert_allclose(grads.state["decode"]["kernel"][...], ref["decode"]["kernel"][...], rtol=1e-5)
    np.testing.assert_allclose(grads.state["enc"]["weight"][...], ref["enc"]["weight"][...], rtol=1e-5)
    new_view = eqx.apply_updates(view, jax.tree.map(lambda g: -1e-3 * g, grads))
    enc0 = model.enc
    nnx.update(model, new_view)
    assert model.enc is not enc0 and type(model.enc) is eqx.nn.Linear
    assert float(loss(nnx.as_pytree(model))) < float(loss(view))


def test_update_without_views_is_core_update():
    model = Tied(nnx.Rngs(0))
    params = jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param))
    nnx.update(model, params)
    assert float(jnp.abs(model.embed.kernel[...]).sum()) == 0.0
    assert float(jnp.abs(model.enc.weight).sum()) == 0.0
    assert isinstance(model.enc.weight, jax.Array)  # never a Variable inside Equinox
    assert nnx.update is nnx.interop.update
