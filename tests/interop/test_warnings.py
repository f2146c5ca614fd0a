"""Point 5: no silent loss of mutations made inside non-nnxfn transforms."""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxfn as nnx

KEY = jax.random.key(0)


class DropNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.lin = nnx.Linear(4, 4, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
        return self.drop(self.lin(x))


X = jnp.ones((8, 4))


def test_dropout_under_eqx_filter_jit_warns_with_path_and_both_fixes():
    model = DropNet(nnx.Rngs(0))
    f = eqx.filter_jit(lambda m, x: m(x))
    with pytest.warns(UserWarning, match=r"model\.drop\.rngs\.count") as record:
        f(model, X)
    message = str(record[0].message)
    assert "nnx.jit" in message and "nnx.as_pytree" in message and "nnx.update" in message


def test_same_under_jax_jit_and_for_variable_writes():
    class Counter(nnx.Module):
        def __init__(self):
            self.n = nnx.BatchStat(jnp.array(0))

        def __call__(self):
            self.n[...] = self.n[...] + 1

    c = Counter()
    with pytest.warns(UserWarning, match=r"model\.n"):
        jax.jit(lambda c: c())(c)
    assert int(c.n[...]) == 0


def test_attribute_rebinding_under_eqx_filter_jit_warns():
    class BN(nnx.Module):
        def __init__(self):
            self.bn, self.state = eqx.nn.make_with_state(eqx.nn.BatchNorm)(3, "b", mode="batch")

        def __call__(self, x):
            fn = jax.vmap(self.bn, axis_name="b", in_axes=(0, None), out_axes=(0, None))
            y, self.state = fn(x, self.state)
            return y

    m = BN()
    with pytest.warns(UserWarning, match=r"attribute 'state' of model"):
        eqx.filter_jit(lambda m, x: m(x))(m, jnp.ones((4, 3)))


def test_nnx_jit_commits_instead_of_warning():
    model = DropNet(nnx.Rngs(0))
    f = nnx.jit(lambda m, x: m(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a, b = f(model, X), f(model, X)
    assert not np.allclose(a, b)  # a new mask per call
    assert int(model.drop.rngs.count[...]) == 2


def test_no_warning_for_eager_apply_updates_tree_at_and_tree_map():
    model = DropNet(nnx.Rngs(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        grads = eqx.filter_grad(lambda m: m.lin(X).sum())(model)
        new = eqx.apply_updates(model, grads)
        new.lin.kernel[...] = new.lin.kernel[...] * 2
        new(X)  # eager dropout on a rebuilt model: a real write, no warning
        swapped = eqx.tree_at(lambda m: m.lin.bias.value, model, jnp.ones(4))
        swapped.lin.bias[...] = jnp.zeros(4)
        swapped(X)
        mapped = jax.tree.map(lambda x: x, model)
        mapped(X)
    assert int(new.drop.rngs.count[...]) == 1 and int(model.drop.rngs.count[...]) == 0
