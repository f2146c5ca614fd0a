"""Transforms composed with each other, and less common argument shapes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import nnxfn as nnx
from tx_models import Boom, Counter, Dropoutish, Linear, assert_unchanged, key_data, snapshot


class Raw(nnx.Module):
    """A raw array attribute (not a Variable) next to a Param."""

    def __init__(self):
        self.buf = jnp.zeros(3)
        self.w = nnx.Param(jnp.ones(3))


class Holder(nnx.Module):
    def __init__(self, sub):
        self.sub = sub


def test_nested_jit_commits_once_per_inner_call():
    m = Counter()
    inner = nnx.jit(lambda m, x: m(x))
    outer = nnx.jit(lambda m, x: inner(m, x) + inner(m, x))
    np.testing.assert_allclose(outer(m, jnp.ones(3)), [2.0, 4.0, 6.0])
    assert int(m.count[...]) == 2


def test_cond_inside_scan_inside_jit():
    m = Counter()

    def step(m, x):
        return m, nnx.cond(x.sum() > 0, lambda m, x: m(x), lambda m, x: -x, m, x)

    xs = jnp.stack([jnp.ones(3), -jnp.ones(3), jnp.ones(3)])
    _, ys = nnx.jit(lambda m, xs: nnx.scan(step)(m, xs))(m, xs)
    np.testing.assert_allclose(ys, [[1, 2, 3], [1, 1, 1], [1, 2, 3]])
    assert int(m.count[...]) == 2
    np.testing.assert_allclose(m.total[...], 2 * jnp.ones(3))


def test_grad_of_vmap_inside_jit_equals_plain():
    m = Counter()
    xs = jnp.arange(12.0).reshape(4, 3)
    g = nnx.jit(
        lambda m: nnx.grad(
            lambda m: nnx.vmap(lambda m, x: (x * m.w).sum() ** 2, in_axes=(None, 0))(m, xs).sum()
        )(m)
    )(m)
    want = jax.grad(lambda w: jax.vmap(lambda x: (x * w).sum() ** 2)(xs).sum())(m.w[...])
    np.testing.assert_allclose(g["w"][...], want, rtol=1e-6)


def test_scan_returns_stacked_new_modules_and_advances_carry_rngs():
    rngs = nnx.Rngs(0)
    r, stack = nnx.scan(
        lambda r, _: (r, Linear(3, 2, rngs=r)), in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0)
    )(rngs, jnp.arange(4))
    assert r is rngs and isinstance(stack, Linear)
    assert stack.kernel.shape == (4, 3, 2)
    assert int(rngs.default.count[...]) == 8
    ref = nnx.Rngs(0)
    for i in range(4):
        layer = Linear(3, 2, rngs=ref)
        np.testing.assert_allclose(stack.kernel[...][i], layer.kernel[...], rtol=1e-6)


def test_vmap_inside_scan_body():
    stack = nnx.vmap(lambda _: Counter(), out_axes=0)(jnp.arange(2))

    def step(stack, x):
        y = nnx.vmap(lambda m, x: m(x), in_axes=(0, None))(stack, x)
        return stack, y.sum()

    _, ys = nnx.scan(step)(stack, jnp.ones((3, 3)))
    np.testing.assert_allclose(ys, [12.0, 12.0, 12.0])
    np.testing.assert_array_equal(stack.count[...], [3, 3])


def test_remat_inside_scan_grad_equals_without():
    stack = nnx.vmap(lambda r: Linear(3, 3, rngs=r), in_axes=None, axis_size=4)(nnx.Rngs(0))

    def make(body):
        f = nnx.scan(body, in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        return nnx.grad(lambda s: f(jnp.ones(3), s).sum())(stack)

    plain = make(lambda x, l: jnp.tanh(l(x)))
    remat = make(nnx.remat(lambda x, l: jnp.tanh(l(x))))
    np.testing.assert_allclose(plain["kernel"][...], remat["kernel"][...], rtol=1e-6)
    np.testing.assert_allclose(plain["bias"][...], remat["bias"][...], rtol=1e-6)


def _checkpoint_cse(jaxpr: object) -> list[bool]:
    """`prevent_cse` of every checkpoint (remat) equation in `jaxpr` and its sub-jaxprs."""
    found: list[bool] = []

    def walk(j: object) -> None:
        for eqn in getattr(j, "jaxpr", j).eqns:  # type: ignore[attr-defined]
            if eqn.primitive.name.startswith(("checkpoint", "remat")):  # "remat2" in JAX 0.10
                found.append(eqn.params["prevent_cse"])
            for v in eqn.params.values():
                for sub in v if isinstance(v, (list, tuple)) else [v]:
                    if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
                        walk(sub)

    walk(jaxpr)
    return found


def test_remat_directly_in_scan_body_lets_xla_cse():
    """`prevent_cse` defaults to False only where a remat is called directly in an nnx.scan
    body (the loop already keeps the recomputation apart); elsewhere, or when given, as asked.
    Gradients are the same either way."""
    stack = nnx.vmap(lambda r: Linear(3, 3, rngs=r), in_axes=None, axis_size=4)(nnx.Rngs(0))
    x = jnp.linspace(-1.0, 1.0, 3)

    def scanned(body):
        return nnx.scan(body, in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)

    def layer(x, lin):
        return jnp.tanh(lin(x))

    def with_grad_inside(x, lin):  # a transform between the scan body and the remat
        g = jax.grad(lambda x: nnx.remat(layer)(x, lin).sum())(x)
        return x + g

    cases = {
        "auto in scan": (scanned(nnx.remat(layer)), [False]),
        "given in scan": (scanned(nnx.remat(layer, prevent_cse=True)), [True]),
        "grad in between": (scanned(with_grad_inside), [True]),
        "no scan": (lambda x, s: nnx.remat(layer)(x, s), [True]),
    }
    for name, (f, expected) in cases.items():
        jaxpr = nnx.make_jaxpr(f)(x, stack)
        assert _checkpoint_cse(jaxpr) == expected, name

    def grads(body):
        return nnx.grad(lambda s: scanned(body)(x, s).sum())(stack)

    auto, given = grads(nnx.remat(layer)), grads(nnx.remat(layer, prevent_cse=True))
    np.testing.assert_array_equal(auto["kernel"][...], given["kernel"][...])
    np.testing.assert_array_equal(auto["bias"][...], given["bias"][...])


def test_while_loop_inside_jit_returns_caller_object():
    m = Counter()
    f = nnx.jit(lambda m: nnx.while_loop(lambda m: m.count[...] < 3, lambda m: (m(jnp.ones(3)), m)[1], m))
    assert f(m) is m
    assert int(m.count[...]) == 3


# -- raw array attributes ---------------------------------------------------------------------------
def test_raw_array_attribute_written_in_each_transform():
    m = Raw()
    nnx.jit(lambda m: setattr(m, "buf", m.buf + 1))(m)
    np.testing.assert_allclose(m.buf, jnp.ones(3))
    nnx.cond(True, lambda m: setattr(m, "buf", m.buf + 2), lambda m: None, m)
    np.testing.assert_allclose(m.buf, 3 * jnp.ones(3))
    nnx.fori_loop(0, 2, lambda i, m: (setattr(m, "buf", m.buf + 1), m)[1], m)
    np.testing.assert_allclose(m.buf, 5 * jnp.ones(3))
    nnx.scan(lambda m, x: (setattr(m, "buf", m.buf + x) or m, x))(m, jnp.ones((4, 3)))
    np.testing.assert_allclose(m.buf, 9 * jnp.ones(3))
    stack = nnx.vmap(lambda _: Raw(), out_axes=0)(jnp.arange(4))
    nnx.vmap(lambda m, x: setattr(m, "buf", m.buf + x))(stack, jnp.arange(12.0).reshape(4, 3))
    np.testing.assert_allclose(stack.buf, jnp.arange(12.0).reshape(4, 3))


def test_raw_array_attribute_not_differentiated():
    m = Raw()
    g = nnx.grad(lambda m: (m.buf * m.w).sum())(m)
    assert set(g.to_pure_dict()) == {"w"}


def test_variable_passed_directly():
    v = nnx.BatchStat(jnp.zeros(()))
    f = nnx.jit(lambda v: v.set_value(v[...] + 1))
    f(v)
    f(v)
    assert float(v[...]) == 2.0


def test_grad_vjp_jvp_of_bare_variable_argument():
    p = nnx.Param(jnp.array(3.0))
    g = nnx.grad(lambda p: p[...] ** 2)(p)
    assert isinstance(g, nnx.Param) and float(g[...]) == 6.0
    gp, gx = nnx.grad(lambda p, x: p[...] * x, argnums=(0, 1))(p, 2.0)
    assert float(gp[...]) == 2.0 and float(gx) == 3.0
    # as Flax: a Variable given directly is differentiated whatever its type
    gb = nnx.grad(lambda b: b[...] * 3.0)(nnx.BatchStat(jnp.array(1.0)))
    assert isinstance(gb, nnx.BatchStat) and float(gb[...]) == 3.0
    out, pullback = nnx.vjp(lambda p: p[...] ** 2, p)
    (gv,) = pullback(jnp.array(1.0))
    assert float(out) == 9.0 and float(gv[...]) == 6.0
    out, tout = nnx.jvp(lambda p: p[...] ** 2, (p,), (jnp.array(1.0),))
    assert float(out) == 9.0 and float(tout) == 6.0
    out, tout = nnx.jvp(lambda p: p[...] ** 2, (p,), (nnx.Param(jnp.array(0.5)),))
    assert float(tout) == 3.0


# -- argument shapes and identity --------------------------------------------------------------------
def test_same_module_twice_in_args():
    m = Counter()
    seen = {}

    def f(a, b):
        seen["same"] = a is b
        return a(jnp.ones(3)) + b(jnp.ones(3))

    nnx.jit(f)(m, m)
    assert seen["same"] and int(m.count[...]) == 2


def test_static_leaves_in_args_key_the_cache():
    traces = []

    @nnx.jit
    def f(m, cfg):
        traces.append(cfg["mode"])
        return m(jnp.ones(3)) * (2 if cfg["mode"] == "a" else 3)

    m = Counter()
    np.testing.assert_allclose(f(m, {"mode": "a"}), [2.0, 4.0, 6.0])
    f(m, {"mode": "a"})
    np.testing.assert_allclose(f(m, {"mode": "b"}), [3.0, 6.0, 9.0])
    assert traces == ["a", "b"] and int(m.count[...]) == 3


def test_python_scalars_and_none_args():
    f = nnx.jit(lambda m, a, b, c: m(jnp.ones(3)) * a if b is None else c)
    np.testing.assert_allclose(f(Counter(), 2.0, None, 3), [2.0, 4.0, 6.0])


def test_exception_on_later_call_with_cached_entry():
    m = Counter()

    @nnx.jit(static_argnums=1)
    def f(m, fail):
        m(jnp.ones(3))
        if fail:
            raise Boom()

    f(m, False)
    before = snapshot(m)
    try:
        f(m, True)
    except Boom:
        pass
    assert_unchanged(before, m)
    f(m, False)
    assert int(m.count[...]) == 2


def test_donation_with_module_shared_by_a_non_donated_arg():
    m = Counter()
    h = Holder(m)
    for donate in (0, 1):
        args = (m, h) if donate == 0 else (h, m)
        f = nnx.jit(lambda a, b: (a.sub if isinstance(a, Holder) else a)(jnp.ones(3)), donate_argnums=donate)
        f(*args)
        f(*args)
    assert int(m.count[...]) == 4 and h.sub is m
    np.testing.assert_allclose(m.w[...], [1.0, 2.0, 3.0])


def test_jit_creates_rngs_and_modules():
    r, c = nnx.jit(lambda: (nnx.Rngs(3), Counter()))()
    np.testing.assert_array_equal(key_data(r()), key_data(jax.random.fold_in(jax.random.key(3), 0)))
    np.testing.assert_allclose(c.w[...], [1.0, 2.0, 3.0])


def test_vjp_on_list_of_modules():
    ms = [Counter(), Counter()]
    out, pullback = nnx.vjp(lambda ms: ms[0](jnp.ones(3)) + 2 * ms[1](jnp.ones(3)), ms)
    (g,) = pullback(jnp.ones(3))
    assert isinstance(g, list)
    np.testing.assert_allclose(g[0]["w"][...], jnp.ones(3))
    np.testing.assert_allclose(g[1]["w"][...], 2 * jnp.ones(3))
    assert int(ms[0].count[...]) == 1


def test_dropout_in_grad_under_jit_advances_each_step():
    m = Dropoutish(0.5, rngs=nnx.Rngs(dropout=0))
    step = nnx.jit(nnx.grad(lambda x, m: m(x).sum()))
    g1, g2 = step(jnp.ones(16), m), step(jnp.ones(16), m)
    assert not np.array_equal(g1, g2)
    assert int(m.rngs.dropout.count[...]) == 2


def test_exception_in_nested_transform_leaves_outer_args_unchanged():
    m, rngs = Counter(), nnx.Rngs(0)
    before = snapshot(m, rngs)

    def inner(m, rngs):
        m(jnp.ones(3))
        rngs()
        raise Boom()

    @nnx.jit
    def outer(m, rngs):
        m(jnp.ones(3))
        nnx.cond(True, inner, lambda m, r: None, m, rngs)

    try:
        outer(m, rngs)
    except Boom:
        pass
    assert_unchanged(before, m, rngs)
