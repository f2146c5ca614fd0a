"""`nnx.scan`: Carry modules, scanned layer stacks, stacked updates, memory, errors."""

from __future__ import annotations

import dataclasses
import functools
import re
import typing as tp

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxfn as nnx
from tx_models import Boom, Counter, Dropoutish, Linear, assert_unchanged, key_data, snapshot

L, D = 5, 4


def make_stack(seed: int = 0, n: int = L) -> Linear:
    @nnx.split_rngs(splits=n)
    @nnx.vmap(in_axes=0, out_axes=0)
    def make(rngs):
        return Linear(D, D, rngs=rngs)

    return make(nnx.Rngs(seed))


def python_loop(x, kernels, biases):
    for k, b in zip(kernels, biases):
        x = jnp.tanh(x @ k + b)
    return x


# -- plain arrays ----------------------------------------------------------------------------
def test_plain_arrays_match_lax_scan():
    def body(c, x):
        return c * 0.5 + x, c.sum() + x.sum()

    xs = jnp.arange(12.0).reshape(L - 1, 3)
    got = nnx.scan(body)(jnp.ones(3), xs)
    want = jax.lax.scan(body, jnp.ones(3), xs)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b)


def test_reverse_and_length_plain():
    def body(c, x):
        return c + x, c

    xs = jnp.arange(6.0)
    got = nnx.scan(body, reverse=True)(0.0, xs)
    want = jax.lax.scan(body, 0.0, xs, reverse=True)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b)

    c, ys = nnx.scan(lambda c: (c * 2, c), in_axes=(nnx.Carry,), length=4)(jnp.array(1.0))
    assert float(c) == 16.0
    np.testing.assert_allclose(ys, [1.0, 2.0, 4.0, 8.0])


# -- a stack of layers --------------------------------------------------------------------------
def test_scan_over_vmap_stack_equals_python_loop():
    stack = make_stack()
    k, b = stack.kernel[...], stack.bias[...]
    assert k.shape == (L, D, D)
    assert not np.allclose(k[0], k[1])  # split_rngs: different layers

    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
    def forward(x, layer):
        return jnp.tanh(layer(x))

    x = jnp.linspace(-1, 1, 2 * D).reshape(2, D)
    np.testing.assert_allclose(forward(x, stack), python_loop(x, k, b), rtol=1e-5)
    assert stack.kernel.shape == (L, D, D)  # caller's stack untouched


def test_scan_stack_reverse_equals_reversed_loop():
    stack = make_stack(1)
    f = nnx.scan(
        lambda x, layer: jnp.tanh(layer(x)), in_axes=(nnx.Carry, 0), out_axes=nnx.Carry, reverse=True
    )
    x = jnp.ones((3, D))
    want = python_loop(x, stack.kernel[...][::-1], stack.bias[...][::-1])
    np.testing.assert_allclose(f(x, stack), want, rtol=1e-5)


def test_stack_scanned_on_axis_1():
    stack = make_stack(2)
    same = nnx.vmap(lambda m: m, in_axes=0, out_axes=0)(stack)
    assert same is stack  # an output that is an input is the same object
    with pytest.raises(ValueError, match="Inconsistent aliasing detected"):  # as Flax: one layout
        nnx.vmap(lambda m: m, in_axes=0, out_axes=1)(stack)
    f = nnx.scan(lambda x, l: jnp.tanh(l(x)), in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
    x = jnp.ones((1, D))
    np.testing.assert_allclose(f(x, stack), python_loop(x, stack.kernel[...], stack.bias[...]), rtol=1e-5)


def test_batchstat_updated_per_layer_comes_back_stacked():
    stack = nnx.vmap(lambda _: Counter(D), out_axes=0)(jnp.arange(L))

    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))
    def forward(x, layer):
        y = layer(x)
        return y, y.sum()

    x0 = jnp.ones(D)
    y, sums = forward(x0, stack)
    w = jnp.arange(1.0, D + 1.0)
    xs = [x0 * w**i for i in range(L)]
    np.testing.assert_allclose(y, x0 * w**L, rtol=1e-6)
    np.testing.assert_allclose(sums, [float((x * w).sum()) for x in xs], rtol=1e-6)
    np.testing.assert_array_equal(stack.count[...], jnp.ones(L))
    np.testing.assert_allclose(stack.total[...], jnp.stack(xs), rtol=1e-6)
    assert stack.w.shape == (L, D)


# -- Carry modules ---------------------------------------------------------------------------------
def test_carry_module_threaded_through_steps():
    m = Counter(3)
    xs = jnp.arange(L * 3.0).reshape(L, 3)

    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))
    def step(m, x):
        return m, m(x)

    out, ys = step(m, xs)
    assert out is m
    assert int(m.count[...]) == L
    np.testing.assert_allclose(m.total[...], xs.sum(0))
    np.testing.assert_allclose(ys, xs * jnp.arange(1.0, 4.0))


def test_carry_tuple_of_module_and_array_and_shared_sub():
    class Holder(nnx.Module):
        def __init__(self, sub):
            self.sub = sub

    shared = Counter(3)
    a, b = Holder(shared), Holder(shared)

    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))
    def step(carry, x):
        (a, b), h = carry
        assert a.sub is b.sub
        h = h + a.sub(x) + b.sub(x)
        return ((a, b), h), b.sub.count[...]

    ((oa, ob), h), counts = step(((a, b), jnp.zeros(3)), jnp.ones((L, 3)))
    assert oa is a and ob is b and a.sub is b.sub is shared
    np.testing.assert_array_equal(counts, 2 * jnp.arange(1, L + 1))
    assert int(shared.count[...]) == 2 * L
    np.testing.assert_allclose(h, 2 * L * jnp.arange(1.0, 4.0))


def test_carry_rngs_draw_new_key_each_step_and_advance():
    rngs = nnx.Rngs(0)
    _, keys = nnx.scan(lambda r, _: (r, r()), in_axes=(nnx.Carry, 0))(rngs, jnp.arange(L))
    want = jnp.stack([key_data(jax.random.fold_in(jax.random.key(0), i)) for i in range(L)])
    np.testing.assert_array_equal(key_data(keys), want)
    assert int(rngs.default.count[...]) == L


def test_dropout_layers_scanned_with_carry_rngs():
    m = Dropoutish(0.5, rngs=nnx.Rngs(dropout=1))
    _, ys = nnx.scan(lambda m, x: (m, m(x)), in_axes=(nnx.Carry, 0))(m, jnp.ones((L, 16)))
    assert len({tuple(np.asarray(r)) for r in ys}) == L
    assert int(m.rngs.dropout.count[...]) == L


def test_broadcast_arg_read_only():
    stack = make_stack(3)
    scale = Counter(D)  # broadcast: only read inside
    f = nnx.scan(
        lambda x, layer, s: jnp.tanh(layer(x)) * s.w, in_axes=(nnx.Carry, 0, None), out_axes=nnx.Carry
    )
    x = jnp.ones(D)
    want = x
    for k, b in zip(stack.kernel[...], stack.bias[...]):
        want = jnp.tanh(want @ k + b) * scale.w[...]
    np.testing.assert_allclose(f(x, stack, scale), want, rtol=1e-5)
    assert int(scale.count[...]) == 0


# -- errors ---------------------------------------------------------------------------------------------
def test_writing_broadcast_arg_threads_it_through_the_steps():
    # Flax: broadcast (axis None) state the body writes is carried from step to step.
    c = Counter(3)
    ys = jnp.arange(L * 3.0).reshape(L, 3)
    f = nnx.scan(lambda x, y, m: (x + m(y), None), in_axes=(nnx.Carry, 0, None))
    out, _ = f(jnp.zeros(3), ys, c)
    np.testing.assert_allclose(out, (ys * c.w[...]).sum(0))
    assert int(c.count[...]) == L
    np.testing.assert_allclose(c.total[...], ys.sum(0))
    f(jnp.zeros(3), ys, c)  # second call: cached trace, still threaded
    assert int(c.count[...]) == 2 * L


def test_variables_created_inside_leave_stacked():
    m = Counter(3)
    axes = nnx.StateAxes({nnx.Intermediate: 0, ...: nnx.Carry})

    def step(m, x):
        m.seen = nnx.Intermediate(x * 2)
        return m, None

    nnx.scan(step, in_axes=(axes, 0), out_axes=(axes, 0))(m, jnp.ones((L, 3)))
    np.testing.assert_allclose(m.seen[...], jnp.full((L, 3), 2.0))


def test_structure_change_inside_scan_on_carry_raises():
    m = Counter(3)
    before = snapshot(m)

    def step(m, x):
        m.new = nnx.Param(x)
        return m, x

    with pytest.raises(ValueError, match=r"created arg.new, whose axis is nnx.Carry.*int axis"):
        nnx.scan(step)(m, jnp.ones((L, 3)))
    assert_unchanged(before, m)


@functools.partial(jax.tree_util.register_dataclass, data_fields=["value", "scale"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class Scaled:
    """A pytree holding Params (as a quantization library stores a weight)."""

    value: tp.Any
    scale: tp.Any


nnx.register_data_type(Scaled)


def test_body_may_replace_a_param_by_a_pytree_of_params_and_delete_a_variable():
    stack = make_stack()
    stack.seen = nnx.BatchStat(jnp.zeros(L))
    kernels, biases = stack.kernel[...], stack.bias[...]

    def step(x, layer):
        layer.kernel = Scaled(nnx.Param(layer.kernel[...] * 2), nnx.Param(jnp.full((1, D), 0.5)))
        del layer.seen
        return x @ (layer.kernel.value[...] * layer.kernel.scale[...]) + layer.bias[...]

    x = jnp.arange(2.0 * D).reshape(2, D)
    y = nnx.scan(step, in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)(x, stack)
    want = x
    for k, b in zip(kernels, biases):
        want = want @ k + b  # 2 * kernel * 0.5
    np.testing.assert_allclose(y, want, rtol=1e-5)
    assert isinstance(stack.kernel, Scaled) and not hasattr(stack, "seen")
    np.testing.assert_allclose(stack.kernel.value[...], 2 * kernels)
    np.testing.assert_allclose(stack.kernel.scale[...], jnp.full((L, 1, D), 0.5))
    assert sorted(nnx.state(stack, nnx.BatchStat).flat_state()) == []
    assert [p for p, _ in nnx.state(stack).flat_state()] == [
        ("bias",),
        ("kernel", "scale"),
        ("kernel", "value"),
    ]


def test_removing_a_carried_variable_raises():
    m = Counter()
    before = snapshot(m)

    def step(m, x):
        del m.total
        return m, x

    with pytest.raises(ValueError, match=r"removed the carried arg.total; a carry must keep"):
        nnx.scan(step)(m, jnp.ones((L, 3)))
    assert_unchanged(before, m)


def test_new_object_in_carry_position_raises():
    v = nnx.BatchStat(jnp.array(0))
    with pytest.raises(ValueError, match="Carry references must be the same between iterations"):
        nnx.scan(lambda v, x: (nnx.BatchStat(v[...] + 1), x))(v, jnp.arange(3))
    assert int(v[...]) == 0


def test_axes_rules_checked_when_wrapping():
    with pytest.raises(ValueError, match="Found multiple Carry definitions in in_axes"):
        nnx.scan(lambda a, b: (a, b), in_axes=(nnx.Carry, nnx.Carry))
    with pytest.raises(ValueError, match="If one of in_axes or out_axes has Carry"):
        nnx.scan(lambda a, b: (a, b), in_axes=(nnx.Carry, 0), out_axes=0)
    with pytest.raises(ValueError, match=r"Cannot broadcast output state: got None at out_axes\[1\]"):
        nnx.scan(lambda a, b: (a, b), out_axes=(nnx.Carry, None))
    f = nnx.scan(lambda c: c, in_axes=nnx.Carry, out_axes=nnx.Carry, length=3)
    with pytest.raises(ValueError, match="in_axes=Carry, the function must take exactly one argument"):
        f(jnp.zeros(()), jnp.zeros(()))
    np.testing.assert_allclose(
        nnx.scan(lambda c: c + 1, in_axes=nnx.Carry, out_axes=nnx.Carry, length=3)(jnp.zeros(())), 3.0
    )


def test_same_object_with_two_axes_raises():
    v = nnx.Param(jnp.arange(3.0))
    with pytest.raises(ValueError, match="Inconsistent aliasing"):
        nnx.scan(lambda c, x: (c, x[...]), in_axes=(nnx.Carry, 0))(v, v)


def test_scan_does_not_retrace_on_second_call():
    traces = []

    def body(c, x):
        traces.append(1)
        return c + 1, x**2

    f = nnx.scan(body)
    c, ys = f(jnp.array(0), jnp.arange(5))
    c, ys = f(c, jnp.arange(5))
    assert len(traces) == 1
    assert int(c) == 10
    np.testing.assert_allclose(ys, jnp.arange(5) ** 2)


def test_exception_inside_scan_leaves_caller_unchanged():
    m, stack, rngs = Counter(3), make_stack(), nnx.Rngs(0)
    before = snapshot(m, stack, rngs)

    def step(carry, layer):
        m, rngs = carry
        m(jnp.ones(3))
        rngs()
        layer.kernel[...] = layer.kernel[...] * 0
        raise Boom()

    with pytest.raises(Boom):
        nnx.scan(step)((m, rngs), stack)
    assert_unchanged(before, m, stack, rngs)


def test_captured_rngs_in_scan_raises():
    rngs = nnx.Rngs(0)
    before = snapshot(rngs)
    with pytest.raises(RuntimeError, match=r"nnx.scan.*Pass it as an argument"):
        nnx.scan(lambda c, x: (c + jax.random.normal(rngs(), ()), x))(0.0, jnp.ones(L))
    assert_unchanged(before, rngs)


def test_keyword_arguments_take_their_positions():
    c, ys = nnx.scan(lambda c, x: (c + x, c))(c=0.0, x=jnp.ones(L))
    assert float(c) == L
    np.testing.assert_allclose(ys, jnp.arange(L))
    with pytest.raises(TypeError, match="keyword-only arguments"):
        nnx.scan(lambda c, x, *, k: (c, x))(0.0, jnp.ones(L), k=1)


# -- memory: read-only parameters are not scan outputs ---------------------------------------------
def _while_results(text: str) -> int:
    found = re.findall(r"%\S+:(\d+) = stablehlo\.while", text)
    assert len(found) == 1, found
    return int(found[0])


def test_read_only_params_are_not_scan_outputs():
    stack = make_stack(4)
    x = jnp.ones((2, D))

    @nnx.jit
    def read(stack, x):
        return nnx.scan(lambda x, l: jnp.tanh(l(x)), in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)(x, stack)

    @nnx.jit
    def write(stack, x):
        def body(x, l):
            l.kernel[...] = l.kernel[...] * 0.5
            l.bias[...] = l.bias[...] + 1.0
            return jnp.tanh(l(x))

        return nnx.scan(body, in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)(x, stack)

    def raw(params, x):
        def body(x, p):
            return jnp.tanh(x @ p[0] + p[1]), None

        return jax.lax.scan(body, x, params)[0]

    params = (stack.kernel[...], stack.bias[...])
    n_read = _while_results(read.lower(stack, x).as_text())
    n_write = _while_results(write.lower(stack, x).as_text())
    n_raw = _while_results(jax.jit(raw).lower(params, x).as_text())
    assert n_read == n_raw
    assert n_write == n_read + 2  # the stacked kernel and bias written by the body

    mem_read = read.lower(stack, x).compile().memory_analysis()
    mem_raw = jax.jit(raw).lower(params, x).compile().memory_analysis()
    mem_write = write.lower(stack, x).compile().memory_analysis()
    if mem_read is not None and mem_raw is not None:
        assert mem_read.output_size_in_bytes == mem_raw.output_size_in_bytes
        assert mem_read.temp_size_in_bytes <= mem_raw.temp_size_in_bytes
        param_bytes = sum(p.size * p.dtype.itemsize for p in params)
        assert mem_write.output_size_in_bytes >= mem_read.output_size_in_bytes + param_bytes

    # and the writes are committed, stacked
    k0, b0 = params
    write(stack, x)
    np.testing.assert_allclose(stack.kernel[...], k0 * 0.5)
    np.testing.assert_allclose(stack.bias[...], b0 + 1.0)


def test_scan_grad_equals_python_loop_grad():
    stack = make_stack(5)
    x = jnp.linspace(-1, 1, D)
    f = nnx.scan(lambda x, l: jnp.tanh(l(x)), in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
    g = nnx.grad(lambda s: f(x, s).sum())(stack)
    rk, rb = jax.grad(lambda k, b: python_loop(x, k, b).sum(), argnums=(0, 1))(
        stack.kernel[...], stack.bias[...]
    )
    np.testing.assert_allclose(g["kernel"][...], rk, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g["bias"][...], rb, rtol=1e-5, atol=1e-6)


def test_scan_decorated_method():
    class Stack(nnx.Module):
        def __init__(self):
            self.layers = make_stack(6)

        def __call__(self, x):
            return self.run(x, self.layers)

        @staticmethod
        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def run(x, layer):
            return jnp.tanh(layer(x))

    s = Stack()
    x = jnp.ones(D)
    np.testing.assert_allclose(s(x), python_loop(x, s.layers.kernel[...], s.layers.bias[...]), rtol=1e-5)
