"""Variables refuse writes from a JAX trace they were not made in (Flax's TraceContextError)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxfn as nnx


def test_closed_over_variable_written_inside_jax_jit_raises_and_keeps_its_value():
    count = nnx.BatchStat(jnp.array(0))

    @jax.jit
    def f(x):
        count.value = count.value + 1
        return x

    with pytest.raises(nnx.TraceContextError, match="Cannot mutate BatchStat from a different trace level"):
        f(1.0)
    assert int(count.value) == 0  # no tracer leaked into it
    count.value = count.value + 1  # at top level the write works
    assert int(count.value) == 1


def test_variable_made_inside_a_trace_cannot_be_written_after_it():
    made = []

    @jax.jit
    def f():
        made.append(nnx.Rngs(1))
        return 0

    f()
    with pytest.raises(nnx.TraceContextError, match="RngCount"):
        made[0].params()


def test_merge_of_closed_over_state_inside_jax_grad_raises_unless_copied():
    class Counter(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.ones(2))
            self.calls = nnx.BatchStat(jnp.array(0))

        def __call__(self, x):
            self.calls.value = self.calls.value + 1
            return jnp.sum(self.w * x)

    model = Counter()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    assert rest["calls"] is model.calls  # the model's own Variable, as in Flax

    def loss(p, copy):
        return nnx.merge(graphdef, p, rest, copy=copy)(jnp.arange(2.0))

    with pytest.raises(nnx.TraceContextError):
        jax.grad(loss)(params, False)
    grads = jax.grad(loss)(params, True)
    np.testing.assert_array_equal(grads["w"].value, np.arange(2.0))
    assert int(model.calls.value) == 0


def test_writes_inside_the_trace_that_made_the_variable_and_through_nnx_transforms_work():
    @jax.jit
    def f(x):
        v = nnx.Variable(x)
        v.value = v.value * 2
        return v.value

    assert float(f(3.0)) == 6.0
    model = nnx.BatchNorm(2, rngs=nnx.Rngs(0))
    nnx.jit(lambda m, x: m(x))(model, jnp.ones((4, 2)))  # committed at top level
    assert model.mean.value.shape == (2,)


def test_ref_variables_may_be_written_inside_jax_jit():
    v = nnx.Variable(jnp.array(1.0), ref=True)

    @jax.jit
    def f():
        v[...] = v[...] + 1

    f()
    assert float(v[...]) == 2.0
