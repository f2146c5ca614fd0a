"""What `nnx.jit(f)` returns, beyond calling it: `jitted_fn` (the `jax.jit` function
the calls go through), its pure arguments, `trace`/`lower`/`compile`, `eval_shape`,
and the attributes Flax's `JitWrapped` has; the same for `nnx.jit_partial`."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxfn as nnx


class Counter(nnx.Module):
    def __init__(self):
        self.w = nnx.Param(jnp.arange(3.0))
        self.calls = nnx.BatchStat(jnp.array(0))

    def __call__(self, x):
        self.calls[...] += 1
        return x @ self.w[...]


def step(model, x):
    return model(x) * 2.0


def test_jitted_fn_is_the_jax_jit_of_every_call():
    jitted = nnx.jit(step)
    model, x = Counter(), jnp.ones((2, 3))
    fn = jitted.jitted_fn
    assert type(fn) is type(jax.jit(lambda x: x))  # a real jax.jit function
    assert fn._cache_size() == 0
    jitted(model, x)
    jitted(model, x + 1)  # same shapes: no new trace
    assert jitted.jitted_fn is fn and fn._cache_size() == 1
    jitted(model, jnp.ones((4, 3)))  # a new shape: traced again, in the same cache
    assert fn._cache_size() == 2
    fn.clear_cache()
    assert fn._cache_size() == 0


def test_jitted_fn_lowers_the_same_computation_from_pure_args():
    jitted = nnx.jit(step)
    model, x = Counter(), jnp.arange(6.0).reshape(2, 3)
    pure = jitted.pure_args(model, x)
    compiled = jitted.jitted_fn.lower(*pure).compile()
    static_exit, outputs, updates = compiled(*pure[1:])  # the static argument is baked in
    expected = np.asarray(x @ jnp.arange(3.0) * 2.0)
    np.testing.assert_allclose(outputs[0], expected)
    assert [int(u) for u in updates] == [1]  # `calls` incremented (the one updated leaf)
    assert int(model.calls[...]) == 0  # pure calls do not touch the model
    np.testing.assert_allclose(jitted(model, x), expected)  # the same numbers through the call
    assert int(model.calls[...]) == 1
    assert jitted.jitted_fn._cache_size() == 1  # the call reused the lowering's trace


def test_trace_lower_compile_take_and_commit_the_original_arguments():
    jitted = nnx.jit(step)
    model, x = Counter(), jnp.ones((2, 3))
    traced = jitted.trace(model, x)
    assert traced.jit_wrapped is jitted and traced.traced.out_info is not None
    lowered = traced.lower()
    assert isinstance(lowered, nnx.transforms.compilation.Lowered) and lowered.jit_wrapped is jitted
    assert "stablehlo" in lowered.as_text() or "func" in lowered.as_text()
    assert lowered.in_tree == lowered.lowered.in_tree and lowered.out_tree == lowered.lowered.out_tree
    compiled = lowered.compile()
    assert compiled.compiled is not None and compiled.as_text()
    np.testing.assert_allclose(compiled(model, x), jnp.full((2,), 6.0))
    assert int(model.calls[...]) == 1  # committed as by the jitted call
    np.testing.assert_allclose(jitted.lower(model, x).compile()(model, x), jnp.full((2,), 6.0))
    assert int(model.calls[...]) == 2
    with pytest.raises(TypeError, match="lowered for arguments of another structure"):
        compiled(Counter(), x, x)


def test_eval_shape_leaves_the_arguments_alone():
    model, x = Counter(), jnp.ones((5, 3))
    out = nnx.jit(step).eval_shape(model, x)
    assert isinstance(out, jax.ShapeDtypeStruct) and out.shape == (5,) and out.dtype == jnp.float32
    assert int(model.calls[...]) == 0


def test_flax_attributes_of_jit_wrapped():
    shardings = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    jitted = nnx.jit(step, static_argnums=(), in_shardings=(None, shardings))
    assert jitted.__wrapped__ is step and jitted.fun is step and jitted.__name__ == "step"
    assert jitted.in_shardings == (None, shardings) and jitted.out_shardings is None
    assert jitted.kwarg_shardings is None and jitted.static_argnums == ()
    jitted(Counter(), jnp.ones((2, 3)))
    kept, donated, others = jitted.jax_in_shardings  # per pure-argument leaf
    assert others == [shardings] and kept == [None, None] and donated == []


def test_jit_wrapped_binds_as_a_method():
    class Model(Counter):
        forward = nnx.jit(step)

    model = Model()
    np.testing.assert_allclose(model.forward(jnp.ones((1, 3))), [6.0])
    assert int(model.calls[...]) == 1


def test_jit_partial_attributes_and_stages():
    model = Counter()
    partial = nnx.jit_partial(step, model)
    assert partial.fun is step and partial.partial_args == (model,) and partial.graph is True
    assert partial.jitted_fn is partial.jitted.jitted_fn and partial.in_shardings is None
    x = jnp.ones((2, 3))
    np.testing.assert_allclose(partial(x), jnp.full((2,), 6.0))
    compiled = partial.lower(x).compile()
    np.testing.assert_allclose(compiled(x), jnp.full((2,), 6.0))
    np.testing.assert_allclose(partial.trace(x).lower().compile()(x), jnp.full((2,), 6.0))
    assert int(model.calls[...]) == 3
    bound = partial.__get__(jnp.ones((1, 3)))  # a method whose `self` is the first remaining arg
    assert isinstance(bound, functools.partial)
    np.testing.assert_allclose(bound(), [6.0])


def test_simple_names_are_the_same_classes():
    compilation = nnx.transforms.compilation
    assert compilation.SimpleJitWrapped is nnx.JitWrapped
    assert type(nnx.jit(step, graph=False)) is compilation.SimpleJitWrapped
    assert compilation.SimpleLowered is compilation.Lowered and compilation.SimpleTraced is compilation.Traced
