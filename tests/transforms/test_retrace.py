"""nnx.jit explains a retrace by naming each input path that changed."""

from __future__ import annotations

import warnings

import jax.numpy as jnp
import numpy as np
import pytest

import nnxfn as nnx
from nnxfn.transforms import retrace


class Model(nnx.Module):
    def __init__(self, width: int = 8):
        self.l1 = nnx.Linear(3, width, rngs=nnx.Rngs(0))
        self.drop = nnx.Dropout(0.1, rngs=nnx.Rngs(1))

    def __call__(self, x):
        return self.drop(self.l1(x), deterministic=True)


def _retraces(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, nnx.RetraceWarning)]


def test_first_trace_and_cached_calls_are_silent():
    model = Model()
    step = nnx.jit(lambda model, x: model(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            step(model, jnp.ones((2, 3)))
        step(model, jnp.ones((2, 3)) * 2.0)  # new values, same shapes: no trace
    with pytest.warns(nnx.RetraceWarning, match=r"x: float32\[2,3\] -> float32\[2,3\] \(weakly typed\)"):
        step(model, jnp.full((2, 3), 2.0))  # a weak-typed array is another trace


def test_shape_change_of_a_variable_is_named_by_its_path():
    model = Model()

    @nnx.jit
    def step(model, x):
        return model(x)

    step(model, jnp.ones((2, 3)))
    model.l1 = nnx.Linear(3, 16, rngs=nnx.Rngs(0))
    with pytest.warns(nnx.RetraceWarning) as record:
        y = step(model, jnp.ones((2, 3)))
    assert y.shape == (2, 16)
    (message,) = _retraces(record)
    assert (
        "nnx.jit(test_shape_change_of_a_variable_is_named_by_its_path.<locals>.step) traced again (trace 2)"
        in message
    )
    assert "model.l1.kernel: float32[3,8] -> float32[3,16]" in message
    assert "model.l1.bias: float32[8] -> float32[16]" in message
    assert "model.l1.out_features: static 8 -> static 16" in message
    assert "x:" not in message  # unchanged inputs are not listed
    assert record[0].filename == __file__  # points at the call that retraced


def test_static_attribute_dtype_scalar_and_static_argument_changes():
    model = Model()
    step = nnx.jit(lambda model, x, scale: model(x) * scale)
    step(model, jnp.ones((2, 3)), 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        step(model, jnp.ones((2, 3)), 2.0)  # another Python float: same trace
    with pytest.warns(nnx.RetraceWarning, match=r"scale: float32\[\] \(Python scalar\) -> float32\[\]"):
        step(model, jnp.ones((2, 3)), jnp.float32(2.0))
    model.drop.rate = 0.5
    with pytest.warns(nnx.RetraceWarning, match=r"model\.drop\.rate: static 0\.1 -> static 0\.5"):
        step(model, jnp.ones((2, 3)), jnp.float32(2.0))
    with pytest.warns(nnx.RetraceWarning, match=r"x: float32\[2,3\] -> bfloat16\[2,3\]"):
        step(model, jnp.ones((2, 3), jnp.bfloat16), jnp.float32(2.0))
    make = nnx.jit(lambda model, n: model(jnp.ones((n, 3))), static_argnums=1)
    make(model, 2)
    with pytest.warns(nnx.RetraceWarning, match=r"n: static 2 -> static 3") as record:
        out = make(model, 3)
    assert out.shape == (3, 8)
    assert "model" not in _retraces(record)[0].split("because:")[1].split("Each")[0]


def test_added_attribute_and_keyword_inputs():
    model = Model()
    step = nnx.jit(lambda model, batch: model(batch["x"]))
    step(model, {"x": jnp.ones((2, 3))})
    model.extra = nnx.Param(jnp.zeros(4))
    with pytest.warns(nnx.RetraceWarning, match=r"model\.extra: \(absent\) -> float32\[4\]"):
        step(model, {"x": jnp.ones((2, 3))})
    with pytest.warns(nnx.RetraceWarning, match=r"batch\['x'\]: float32\[2,3\] -> float32\[5,3\]"):
        step(model, batch={"x": jnp.ones((5, 3))})


def test_switch_turns_explanations_off():
    model = Model()
    step = nnx.jit(lambda model, x: model(x))
    nnx.set_retrace_warnings(False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            step(model, jnp.ones((2, 3)))
            np.testing.assert_allclose(step(model, jnp.ones((4, 3))).shape, (4, 8))
    finally:
        nnx.set_retrace_warnings(True)
    assert retrace.retrace_warnings_enabled()


def test_explicitly_static_attribute_is_named():
    import optax

    step = nnx.jit(lambda opt, x: x * 2)
    model = Model()
    step(nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param), jnp.ones(2))
    with pytest.warns(nnx.RetraceWarning, match=r"opt\.tx: static GradientTransformation.*\(another object"):
        step(nnx.Optimizer(model, optax.sgd(0.2), wrt=nnx.Param), jnp.ones(2))
