"""Equinox-style ensembles: a Module built under `eqx.filter_vmap`, and a
Module's pytree unflatten given the sentinel leaves JAX/Equinox substitute."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import nnxfn as nnx


def test_filter_vmap_builds_an_ensemble_of_linears():
    keys = jax.random.split(jax.random.key(0), 4)
    ensemble = eqx.filter_vmap(lambda k: nnx.Linear(2, 3, rngs=nnx.Rngs(k)))(keys)
    assert isinstance(ensemble, nnx.Linear)
    assert ensemble.kernel.value.shape == (4, 2, 3)
    for i in range(4):  # member i is exactly the Linear built from keys[i]
        single = nnx.Linear(2, 3, rngs=nnx.Rngs(keys[i]))
        np.testing.assert_allclose(ensemble.kernel.value[i], single.kernel.value, rtol=1e-6)
    x = jnp.arange(2.0)
    out = eqx.filter_vmap(lambda m, x: m(x), in_axes=(eqx.if_array(0), None))(ensemble, x)
    expected = x @ ensemble.kernel.value + ensemble.bias.value
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_pytree_unflatten_accepts_sentinel_and_none_leaves():
    class Holder(nnx.Module):
        def __init__(self):
            self.lin = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
            self.mlp = eqx.nn.MLP(2, 2, 4, 1, key=jax.random.key(0))
            self.xs = [jnp.ones(2), nnx.Param(jnp.zeros(1))]

    leaves, treedef = jax.tree_util.tree_flatten(Holder())
    marker = object()
    rebuilt = jax.tree_util.tree_unflatten(treedef, [marker] * len(leaves))
    assert rebuilt.lin.kernel.value is marker
    assert rebuilt.mlp.layers[0].weight is marker
    assert rebuilt.xs[0] is marker and rebuilt.xs[1].value is marker
    nones = jax.tree_util.tree_unflatten(treedef, [None] * len(leaves))
    assert nones.lin.kernel.value is None and nones.xs[0] is None
