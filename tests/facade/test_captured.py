"""The captured-write error names the object's path, not only its type and shape."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

import nnxfn as nnx


class Model(nnx.Module):
    def __init__(self):
        self.l1 = nnx.Linear(3, 8, rngs=nnx.Rngs(0))
        self.blocks = [nnx.Linear(8, 8, rngs=nnx.Rngs(1))]


MODEL = Model()


def test_closure_capture_is_named_by_variable_and_path():
    model = Model()
    before = model.blocks[0].kernel[...]

    @nnx.jit
    def step(x):
        model.blocks[0].kernel[...] = jnp.zeros((8, 8))
        return x

    with pytest.raises(
        RuntimeError,
        match=r"nnx\.jit: the value of model\.blocks\[0\]\.kernel "
        r"\(a Param of shape \(8, 8\) and dtype float32\) was "
        r"changed inside the transform.*Pass it as an argument",
    ):
        step(1.0)
    assert (model.blocks[0].kernel[...] == before).all()  # nothing half-applied


def test_global_capture_and_a_module_attribute():
    @nnx.jit
    def step(x):
        MODEL.l1.kernel[...] = jnp.zeros((3, 8))
        return x

    with pytest.raises(RuntimeError, match=r"the value of MODEL\.l1\.kernel \(a Param"):
        step(1.0)

    @nnx.jit
    def rebind(x):
        MODEL.l1.extra = 3
        return x

    with pytest.raises(RuntimeError, match=r"attribute 'extra' of MODEL\.l1 \(a Linear\)"):
        rebind(1.0)


def test_object_reached_only_through_a_class_is_named_by_its_owners():
    class Holder:  # not a graph node: the frames cannot see the model
        model = Model()

    @nnx.jit
    def step(x):
        Holder.model.l1.bias[...] = jnp.ones(8)
        return x

    with pytest.raises(RuntimeError, match=r"the value of Model\.l1\.bias \(a Param of shape \(8,\)"):
        step(1.0)
