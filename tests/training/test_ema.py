"""EMA vs the numpy formula."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnxfn.core import state
from nnxfn.facade.module import Module
from nnxfn.facade.variables import BatchStat, Param, Variable
import nnxfn as nnx
from nnxfn.training.ema import EMA


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
    return jax.tree.map(
        lambda v: v.value if isinstance(v, Variable) else v, tree, is_leaf=lambda v: isinstance(v, Variable)
    )


def perturb(model, i: int):
    model.w.value = model.w.value + i * 0.5
    model.layers[0].value = model.layers[0].value - i
    model.stats.value = model.stats.value + 1


def test_matches_numpy_formula():
    model = Net()
    ema = EMA(model, decay=0.9, only=Param)
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
    # Flax's layout: copies of the tracked Variables, same types, no batch stats.
    assert type(ema.params["w"]) is Param and type(ema.params["layers"][1]) is Frozen
    assert set(state(ema).to_pure_dict()) == {"params"}
    assert "stats" not in ema.params


def test_default_tracks_every_variable_and_copies_non_floats():
    model = Net()
    model.count = Variable(jnp.array(3))
    ema = EMA(model, decay=0.5)
    assert type(ema.params["stats"]) is BatchStat
    perturb(model, 1)
    model.count.value = jnp.array(10)
    ema.update(model)
    np.testing.assert_allclose(ema.params["stats"].value, 0.5)  # 0.5 * 0 + 0.5 * 1
    assert int(ema.params["count"].value) == 10 and ema.params["count"].value.dtype == jnp.int32


def test_apply_to_shares_the_averages():
    model = Net()
    ema = EMA(model, decay=0.5, only=Param)
    perturb(model, 2)
    ema.update(model)
    current = raw(state(model))
    averaged = ema.apply_to(model)
    assert averaged is not model
    assert averaged.w is ema.params["w"] and averaged.layers[1] is ema.params["layers"][1]
    assert averaged.stats is model.stats  # untracked: the model's own
    np.testing.assert_allclose(averaged.w.value, 0.5 * 1 + 0.5 * 2.0)
    jax.tree.map(np.testing.assert_array_equal, raw(state(model)), current)  # unchanged
    perturb(model, 1)
    ema.update(model)  # seen by the view
    np.testing.assert_allclose(averaged.w.value, 0.5 * 1.5 + 0.5 * 2.5)
    np.testing.assert_allclose(
        averaged(jnp.ones((1, 2))), jnp.ones((1, 2)) @ averaged.w.value + averaged.layers[0].value
    )


def test_only_restricts():
    model = Net()
    ema = EMA(model, decay=0.5, only=Frozen)
    assert set(state(ema.params).to_pure_dict()) == {"layers"}
    model.layers[1].value = jnp.full(2, 7.0)
    model.w.value = jnp.zeros((2, 3))
    ema.update(model)
    np.testing.assert_allclose(ema.params["layers"][1].value, 6.0)
    np.testing.assert_allclose(ema.apply_to(model).w.value, 0.0)  # not averaged


def test_inside_nnx_jit():
    model, ema = Net(), EMA(Net(), decay=0.8, only=Param)
    view = ema.apply_to(model)

    @nnx.jit
    def step(model, ema):
        ema.update(model)

    perturb(model, 1)
    step(model, ema)
    np.testing.assert_allclose(ema.params["w"].value, 0.8 + 0.2 * 1.5, rtol=1e-6)
    np.testing.assert_allclose(view.w.value, 0.8 + 0.2 * 1.5, rtol=1e-6)


def test_errors():
    with pytest.raises(ValueError, match=r"decay=1.5 must be in \[0, 1\]"):
        EMA(Net(), decay=1.5)
    ema = EMA(Net(), 0.9)
    other = Net()
    other.extra = Param(jnp.ones(1))
    with pytest.raises(ValueError, match=r"in the model, not in the EMA: model\.extra"):
        ema.update(other)
    smaller = Net()
    del smaller.w
    with pytest.raises(ValueError, match=r"in the EMA, not in the model: model\.w"):
        ema.apply_to(smaller)
    with pytest.raises(TypeError, match=r"model\.x is a ndarray, not a Variable"):
        EMA({"x": np.ones(2)}, 0.9)
