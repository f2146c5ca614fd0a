"""EMA vs the numpy formula."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnxfn.core import merge, split, state
from nnxfn.facade.module import Module
from nnxfn.facade.variables import BatchStat, Param, Variable
from nnxfn.training.ema import EMA, EMAState


class Frozen(Param):
    pass


class Net(Module):
    def __init__(self):
        self.w = Param(jnp.ones((2, 3)))
        self.layers = [Param(jnp.zeros(3)), Frozen(jnp.full(2, 5.0))]
        self.stats = BatchStat(jnp.zeros(3))

    def __call__(self, x):
        return x @ self.w + self.layers[0]


def raw(tree):
    return jax.tree.map(lambda v: v.value if isinstance(v, Variable) else v, tree,
                        is_leaf=lambda v: isinstance(v, Variable))


def perturb(model, i: int):
    model.w.value = model.w.value + i * 0.5
    model.layers[0].value = model.layers[0].value - i
    model.stats.value = model.stats.value + 1


def test_matches_numpy_formula():
    model = Net()
    ema = EMA(model, decay=0.9)
    expected = {"w": np.ones((2, 3)), "b": np.zeros(3), "f": np.full(2, 5.0)}
    for i in range(1, 6):
        perturb(model, i)
        ema.update(model)
        expected["w"] = 0.9 * expected["w"] + 0.1 * np.asarray(model.w.value)
        expected["b"] = 0.9 * expected["b"] + 0.1 * np.asarray(model.layers[0].value)
        expected["f"] = 0.9 * expected["f"] + 0.1 * np.asarray(model.layers[1].value)
    np.testing.assert_allclose(ema.params["w"].value, expected["w"], rtol=1e-6)
    np.testing.assert_allclose(ema.params["layers"][0].value, expected["b"], rtol=1e-6)
    np.testing.assert_allclose(ema.params["layers"][1].value, expected["f"], rtol=1e-6)
    assert isinstance(ema.params["w"], EMAState) and not isinstance(ema.params["w"], Param)


def test_apply_to_and_ema_model():
    model = Net()
    ema = EMA(model, decay=0.5)
    perturb(model, 2)
    ema.update(model)
    current = raw(state(model))
    averaged = ema.apply_to(model)
    assert averaged is not model
    assert type(averaged.w) is Param and type(averaged.layers[1]) is Frozen
    np.testing.assert_allclose(averaged.w.value, 0.5 * 1 + 0.5 * 2.0)
    np.testing.assert_allclose(averaged.stats.value, model.stats.value)  # rest from `model`
    jax.tree.map(np.testing.assert_array_equal, raw(state(model)), current)  # unchanged

    other = ema.ema_model()
    assert type(other) is Net and type(other.stats) is BatchStat
    np.testing.assert_allclose(other.w.value, averaged.w.value)
    np.testing.assert_allclose(other.stats.value, model.stats.value)  # as of the last update
    np.testing.assert_allclose(other(jnp.ones((1, 2))), averaged(jnp.ones((1, 2))))


def test_wrt_restricts():
    model = Net()
    ema = EMA(model, decay=0.5, wrt=Frozen)
    assert set(state(ema.params).to_pure_dict()) == {"layers"}
    model.layers[1].value = jnp.full(2, 7.0)
    model.w.value = jnp.zeros((2, 3))
    ema.update(model)
    np.testing.assert_allclose(ema.params["layers"][1].value, 6.0)
    np.testing.assert_allclose(ema.apply_to(model).w.value, 0.0)  # not averaged


def test_jit_through_split_merge():
    model, ema = Net(), EMA(Net(), decay=0.8)
    graphdef, st = split(ema)

    @jax.jit
    def step(st, model_state):
        e = merge(graphdef, st)
        e.update(merge(split(model)[0], model_state))
        return split(e)[1]

    perturb(model, 1)
    st = step(st, split(model)[1])
    np.testing.assert_allclose(merge(graphdef, st).params["w"].value, 0.8 + 0.2 * 1.5, rtol=1e-6)


def test_errors():
    with pytest.raises(ValueError, match=r"decay=1.5 must be in \[0, 1\]"):
        EMA(Net(), decay=1.5)
    ema = EMA(Net())
    other = Net()
    other.extra = Param(jnp.ones(1))
    with pytest.raises(ValueError, match=r"in the model, not in the EMA: model\.extra"):
        ema.update(other)
    smaller = Net()
    del smaller.w
    with pytest.raises(ValueError, match=r"in the EMA, not in the model: model\.w"):
        ema.apply_to(smaller)
