"""`nnx.grad`, `value_and_grad`, `vjp`, `jvp`, `custom_vjp`, `remat` vs plain JAX on pytrees."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxfn as nnx
from tx_models import (
    MLP,
    Boom,
    Counter,
    Dropoutish,
    assert_tree_close,
    assert_unchanged,
    flat_raw,
    mlp_apply,
    mlp_params,
    snapshot,
)

X = jnp.linspace(-1.0, 1.0, 10).reshape(5, 2)
Y = jnp.linspace(0.0, 1.0, 15).reshape(5, 3)


def loss_fn(m, x, y):
    return ((m(x) - y) ** 2).mean()


def ref_loss(p, x, y):
    return ((mlp_apply(p, x) - y) ** 2).mean()


class Norm(nnx.Module):
    """Param scale + BatchStat running mean written in the forward pass."""

    def __init__(self, n: int):
        self.scale = nnx.Param(jnp.linspace(0.5, 1.5, n))
        self.mean = nnx.BatchStat(jnp.zeros(n))
        self.steps = nnx.BatchStat(jnp.array(0, jnp.int32))

    def __call__(self, x):
        self.mean[...] = 0.9 * self.mean[...] + 0.1 * x.mean(0)
        self.steps[...] = self.steps[...] + 1
        return (x - x.mean(0)) * self.scale


# -- grad / value_and_grad --------------------------------------------------------------
def test_grad_mlp_equals_jax_grad_on_params_dict():
    m = MLP(2, 8, 3, rngs=nnx.Rngs(0))
    g = nnx.grad(loss_fn)(m, X, Y)
    assert isinstance(g, nnx.State)
    want = jax.grad(ref_loss)(mlp_params(m), X, Y)
    assert_tree_close(g.to_pure_dict(), want)
    assert isinstance(g["l1"]["kernel"], nnx.Param)


def test_value_and_grad_equals_jax():
    m = MLP(2, 8, 3, rngs=nnx.Rngs(1))
    val, g = nnx.value_and_grad(loss_fn)(m, X, Y)
    rv, rg = jax.value_and_grad(ref_loss)(mlp_params(m), X, Y)
    np.testing.assert_allclose(val, rv, rtol=1e-6)
    assert_tree_close(g.to_pure_dict(), rg)


def test_grad_under_jit_equals_jax():
    m = MLP(2, 8, 3, rngs=nnx.Rngs(2))
    g = nnx.jit(nnx.grad(loss_fn))(m, X, Y)
    want = jax.jit(jax.grad(ref_loss))(mlp_params(m), X, Y)
    assert_tree_close(g.to_pure_dict(), want)


def test_default_filter_params_only_batchstat_updated():
    m = Norm(3)
    x = jnp.arange(6.0).reshape(2, 3)
    g = nnx.grad(lambda m, x: (m(x) ** 2).sum())(m, x)
    assert set(flat_raw(g)) == {("scale",)}
    want = jax.grad(lambda s: (((x - x.mean(0)) * s) ** 2).sum())(jnp.linspace(0.5, 1.5, 3))
    np.testing.assert_allclose(g["scale"][...], want)
    np.testing.assert_allclose(m.mean[...], 0.1 * x.mean(0))
    assert int(m.steps[...]) == 1


def test_diffstate_filter_picks_other_leaves():
    m = Norm(3)
    x = jnp.arange(6.0).reshape(2, 3)

    def f(m, x):
        return (m.mean[...] * m.scale[...]).sum() + (x * m.scale[...]).sum()

    g = nnx.grad(f, argnums=nnx.DiffState(0, nnx.PathContains("mean")))(m, x)
    assert set(flat_raw(g)) == {("mean",)}
    assert isinstance(g["mean"], nnx.BatchStat)
    np.testing.assert_allclose(g["mean"][...], m.scale[...])
    # a filter that selects an integer leaf needs allow_int, like jax.grad
    with pytest.raises(TypeError, match="allow_int"):
        nnx.grad(f, argnums=nnx.DiffState(0, nnx.BatchStat))(m, x)
    g_int = nnx.grad(f, argnums=nnx.DiffState(0, nnx.BatchStat), allow_int=True)(m, x)
    assert g_int["steps"][...].dtype == jax.dtypes.float0
    g_all = nnx.grad(f, argnums=nnx.DiffState(0, nnx.Any(nnx.Param, nnx.PathContains("mean"))))(m, x)
    assert set(flat_raw(g_all)) == {("mean",), ("scale",)}
    np.testing.assert_allclose(g_all["scale"][...], m.mean[...] + x.sum(0))


def test_diffstate_path_filter_on_submodule():
    m = MLP(2, 4, 3, rngs=nnx.Rngs(0))
    g = nnx.grad(loss_fn, argnums=nnx.DiffState(0, nnx.PathContains("l2")))(m, X, Y)
    want = jax.grad(ref_loss)(mlp_params(m), X, Y)
    assert set(g.to_pure_dict()) == {"l2"}
    assert_tree_close(g.to_pure_dict()["l2"], want["l2"])


def test_argnums_tuple_mixing_modules_and_arrays():
    m = MLP(2, 4, 3, rngs=nnx.Rngs(3))
    gm, gx, gy = nnx.grad(loss_fn, argnums=(0, 1, 2))(m, X, Y)
    rm, rx, ry = jax.grad(ref_loss, argnums=(0, 1, 2))(mlp_params(m), X, Y)
    assert_tree_close(gm.to_pure_dict(), rm)
    np.testing.assert_allclose(gx, rx, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(gy, ry, rtol=1e-5, atol=1e-7)
    gx_only = nnx.grad(loss_fn, argnums=1)(m, X, Y)
    np.testing.assert_allclose(gx_only, rx, rtol=1e-5, atol=1e-7)
    gy2, gm2 = nnx.grad(loss_fn, argnums=(2, nnx.DiffState(0, nnx.Param)))(m, X, Y)
    np.testing.assert_allclose(gy2, ry, rtol=1e-5, atol=1e-7)
    assert_tree_close(gm2.to_pure_dict(), rm)


def test_modules_in_list_and_dict_args():
    a, b = MLP(2, 4, 3, rngs=nnx.Rngs(0)), MLP(2, 4, 3, rngs=nnx.Rngs(1))

    def f(ms, d):
        return loss_fn(ms[0], X, Y) + 2 * loss_fn(d["b"], X, Y)

    g_list, g_dict = nnx.grad(f, argnums=(0, 1))([a], {"b": b})
    assert isinstance(g_list, list) and isinstance(g_dict, dict)
    assert_tree_close(g_list[0].to_pure_dict(), jax.grad(ref_loss)(mlp_params(a), X, Y))
    want_b = jax.tree.map(lambda t: 2 * t, jax.grad(ref_loss)(mlp_params(b), X, Y))
    assert_tree_close(g_dict["b"].to_pure_dict(), want_b)


def test_shared_submodule_gradient_accumulates():
    class Two(nnx.Module):
        def __init__(self, lin):
            self.a = lin
            self.b = lin

    m = MLP(2, 4, 3, rngs=nnx.Rngs(0))
    two = Two(m)

    def f(two):
        return loss_fn(two.a, X, Y) + loss_fn(two.b, X, Y)

    g = nnx.grad(f)(two)
    assert set(g.to_pure_dict()) == {"a"}  # one leaf per shared Variable, at its first path
    want = jax.tree.map(lambda t: 2 * t, jax.grad(ref_loss)(mlp_params(m), X, Y))
    assert_tree_close(g.to_pure_dict()["a"], want)
    assert two.a is two.b is m


def test_has_aux_and_value_and_grad_has_aux():
    m = MLP(2, 4, 3, rngs=nnx.Rngs(0))

    def f(m):
        y = m(X)
        return ((y - Y) ** 2).mean(), {"pred": y}

    g, aux = nnx.grad(f, has_aux=True)(m)
    np.testing.assert_allclose(aux["pred"], mlp_apply(mlp_params(m), X), rtol=1e-6)
    (val, aux2), g2 = nnx.value_and_grad(f, has_aux=True)(m)
    rv = ref_loss(mlp_params(m), X, Y)
    np.testing.assert_allclose(val, rv, rtol=1e-6)
    assert_tree_close(g.to_pure_dict(), g2.to_pure_dict())
    assert_tree_close(g.to_pure_dict(), jax.grad(ref_loss)(mlp_params(m), X, Y))


def test_has_aux_returns_module_that_is_input():
    m = Counter()
    g, out = nnx.grad(lambda m, x: (m(x).sum(), m), has_aux=True)(m, jnp.ones(3))
    assert out is m
    np.testing.assert_allclose(g["w"][...], jnp.ones(3))
    assert int(m.count[...]) == 1


def test_allow_int():
    def f(x, n):
        return (x * n).sum()

    gx, gn = nnx.grad(f, argnums=(0, 1), allow_int=True)(jnp.ones(3), jnp.array(2))
    rx, rn = jax.grad(f, argnums=(0, 1), allow_int=True)(jnp.ones(3), jnp.array(2))
    np.testing.assert_allclose(gx, rx)
    assert gn.dtype == rn.dtype == jax.dtypes.float0
    with pytest.raises(TypeError):
        nnx.grad(f, argnums=(0, 1))(jnp.ones(3), jnp.array(2))


def test_rngs_in_loss_advance_and_match_reference():
    m = Dropoutish(0.5, rngs=nnx.Rngs(dropout=7))
    w = jnp.arange(1.0, 9.0)
    ref_key = jax.random.fold_in(jax.random.key(7), 0)

    def f(w, m):
        return (m(w) * w).sum()

    g = nnx.grad(f)(w, m)
    keep = jax.random.bernoulli(ref_key, 0.5, w.shape)
    want = jax.grad(lambda w: (jnp.where(keep, w / 0.5, 0.0) * w).sum())(w)
    np.testing.assert_allclose(g, want)
    assert int(m.rngs.dropout.count[...]) == 1


def test_structural_mutation_in_grad_committed():
    m = Counter()

    def f(m, x):
        m.sow(nnx.Intermediate, "seen", x.sum())
        return m(x).sum()

    g = nnx.grad(f)(m, jnp.ones(3))
    np.testing.assert_allclose(g["w"][...], jnp.ones(3))
    assert float(m.seen[...][0]) == 3.0
    assert int(m.count[...]) == 1


def test_exception_inside_grad_leaves_caller_unchanged():
    m, rngs = Norm(3), nnx.Rngs(0)
    before = snapshot(m, rngs)

    def f(m, rngs):
        m(jnp.ones((2, 3)))
        rngs()
        m.added = nnx.Param(jnp.ones(1))
        raise Boom()

    with pytest.raises(Boom):
        nnx.grad(f)(m, rngs)
    assert_unchanged(before, m, rngs)


def test_captured_module_write_in_grad_raises():
    m = Counter()
    before = snapshot(m)
    with pytest.raises(RuntimeError, match=r"nnx.grad.*Pass it as an argument"):
        nnx.grad(lambda x: m(x).sum())(jnp.ones(3))
    assert_unchanged(before, m)


def test_grad_of_unbound_method_and_bound_error():
    m = Counter()
    g = nnx.grad(lambda m, x: Counter.__call__(m, x).sum())(m, jnp.ones(3))
    np.testing.assert_allclose(g["w"][...], jnp.ones(3))
    with pytest.raises(ValueError, match="bound method"):
        nnx.grad(m.__call__)


# -- vjp / jvp ---------------------------------------------------------------------------
def test_vjp_matches_jax():
    m = MLP(2, 4, 3, rngs=nnx.Rngs(0))
    out, pullback = nnx.vjp(lambda m, x: m(x), m, X)
    rout, rpull = jax.vjp(mlp_apply, mlp_params(m), X)
    np.testing.assert_allclose(out, rout, rtol=1e-6)
    ct = jnp.ones_like(out)
    gm, gx = pullback(ct)
    rm, rx = rpull(ct)
    assert_tree_close(gm.to_pure_dict(), rm)
    np.testing.assert_allclose(gx, rx, rtol=1e-5)


def test_vjp_commits_writes_and_has_aux():
    m = Counter()
    out, pullback, aux = nnx.vjp(lambda m, x: (m(x), x.sum()), m, jnp.ones(3), has_aux=True)
    assert float(aux) == 3.0
    assert int(m.count[...]) == 1
    gm, gx = pullback(jnp.ones(3))
    np.testing.assert_allclose(gm["w"][...], jnp.ones(3))
    np.testing.assert_allclose(gx, [1.0, 2.0, 3.0])


def test_jvp_with_state_tangents_matches_jax():
    m = MLP(2, 4, 3, rngs=nnx.Rngs(0))
    p = mlp_params(m)
    tp_ = jax.tree.map(lambda a: jnp.full_like(a, 0.5), p)
    tx = jnp.ones_like(X)
    t_state = jax.tree.map(lambda a: jnp.full_like(a, 0.5), nnx.state(m, nnx.Param))
    assert isinstance(t_state, nnx.State)
    out, tout = nnx.jvp(lambda m, x: m(x), (m, X), (t_state, tx))
    rout, rtout = jax.jvp(mlp_apply, (p, X), (tp_, tx))
    np.testing.assert_allclose(out, rout, rtol=1e-6)
    np.testing.assert_allclose(tout, rtout, rtol=1e-5)


def test_jvp_commits_writes():
    m = Counter()
    t = nnx.State({"w": jnp.ones(3)})
    out, tout = nnx.jvp(lambda m, x: m(x), (m, jnp.full(3, 2.0)), (t, jnp.zeros(3)))
    np.testing.assert_allclose(out, [2.0, 4.0, 6.0])
    np.testing.assert_allclose(tout, [2.0, 2.0, 2.0])
    assert int(m.count[...]) == 1


# -- custom_vjp ----------------------------------------------------------------------------
def test_custom_vjp_module_and_array():
    @nnx.custom_vjp
    def f(m, x):
        return jnp.sum(m.w[...] * x)

    def fwd(m, x):
        return f(m, x), (m.w[...], x)

    def bwd(res, g):
        (m_g, x_g), g = g  # Flax's convention: (cotangents of the inputs' state, of the output)
        assert isinstance(m_g, nnx.State) and x_g is None
        w, x = res
        return nnx.State({"w": 3.0 * g * x}), 5.0 * g * w  # distinguishable from autodiff

    f.defvjp(fwd, bwd)
    m = Counter()
    x = jnp.array([1.0, -1.0, 2.0])
    np.testing.assert_allclose(f(m, x), jnp.sum(m.w[...] * x))
    gm, gx = nnx.grad(lambda m, x: f(m, x), argnums=(0, 1))(m, x)
    np.testing.assert_allclose(gm["w"][...], 3.0 * x)
    np.testing.assert_allclose(gx, 5.0 * m.w[...])

    @jax.custom_vjp
    def rf(w, x):
        return jnp.sum(w * x)

    rf.defvjp(lambda w, x: (rf(w, x), (w, x)), lambda r, g: (3.0 * g * r[1], 5.0 * g * r[0]))
    rw, rx = jax.grad(rf, argnums=(0, 1))(m.w[...], x)
    np.testing.assert_allclose(gm["w"][...], rw)
    np.testing.assert_allclose(gx, rx)


def test_custom_vjp_nondiff_argnums():
    @functools.partial(nnx.custom_vjp, nondiff_argnums=(0,))
    def f(scale, m, x):
        return scale * jnp.sum(m.w[...] * x)

    def fwd(scale, m, x):
        return f(scale, m, x), (x,)

    def bwd(scale, res, g):
        _, g = g
        (x,) = res
        return nnx.State({"w": -scale * g * x}), None  # None: zero cotangent for x

    f.defvjp(fwd, bwd)
    m = Counter()
    x = jnp.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(f(2.0, m, x), 2.0 * 14.0)
    g = nnx.grad(lambda m: f(2.0, m, x))(m)
    np.testing.assert_allclose(g["w"][...], -2.0 * x)
    gx = nnx.grad(lambda x: f(2.0, m, x))(x)
    np.testing.assert_allclose(gx, jnp.zeros(3))


def test_custom_vjp_missing_leaves_are_zero():
    class Two(nnx.Module):
        def __init__(self):
            self.a = nnx.Param(jnp.ones(2))
            self.b = nnx.Param(jnp.ones(2) * 2)

    @nnx.custom_vjp
    def f(m):
        return (m.a[...] * m.b[...]).sum()

    f.defvjp(lambda m: (f(m), None), lambda res, g: (nnx.State({"a": g[1] * jnp.ones(2)}),))
    g = nnx.grad(f)(Two())
    np.testing.assert_allclose(g["a"][...], jnp.ones(2))
    np.testing.assert_allclose(g["b"][...], jnp.zeros(2))


# -- remat ------------------------------------------------------------------------------------
def test_remat_same_values_and_grads():
    m = MLP(2, 16, 3, rngs=nnx.Rngs(0))
    plain = nnx.value_and_grad(loss_fn)(m, X, Y)

    @nnx.remat
    def block(m, x):
        return m(x)

    remat = nnx.value_and_grad(lambda m, x, y: ((block(m, x) - y) ** 2).mean())(m, X, Y)
    np.testing.assert_allclose(plain[0], remat[0], rtol=1e-6)
    assert_tree_close(plain[1].to_pure_dict(), remat[1].to_pure_dict())
    ref = jax.value_and_grad(lambda p: ((jax.checkpoint(mlp_apply)(p, X) - Y) ** 2).mean())(mlp_params(m))
    assert_tree_close(remat[1].to_pure_dict(), ref[1])


def test_remat_in_jaxpr_and_commits_writes():
    m = Counter()
    f = nnx.remat(lambda m, x: m(x))
    out = f(m, jnp.ones(3))
    np.testing.assert_allclose(out, [1.0, 2.0, 3.0])
    assert int(m.count[...]) == 1
    jaxpr = nnx.make_jaxpr(lambda m: nnx.grad(lambda m: f(m, jnp.ones(3)).sum())(m)["w"][...])(m)
    assert "remat" in str(jaxpr) or "checkpoint" in str(jaxpr)
    assert int(m.count[...]) == 1  # make_jaxpr does not commit


def test_remat_static_argnums_and_method():
    class Block(nnx.Module):
        def __init__(self):
            self.c = Counter()

        @functools.partial(nnx.remat, static_argnums=(2,))
        def apply(self, x, n):
            for _ in range(n):
                x = self.c(x)
            return x

    b = Block()
    np.testing.assert_allclose(b.apply(jnp.ones(3), 2), [1.0, 4.0, 9.0])
    assert int(b.c.count[...]) == 2
    g = nnx.grad(lambda b: b.apply(jnp.ones(3), 2).sum())(b)
    np.testing.assert_allclose(g["c"]["w"][...], 2 * jnp.arange(1.0, 4.0))


def test_custom_vjp_bare_variable_argument():
    @nnx.custom_vjp
    def f(p, x):
        return p[...] * x

    f.defvjp(lambda p, x: (f(p, x), (p[...], x)), lambda res, g: (nnx.Param(7.0 * g[1]), g[1] * res[0]))
    p = nnx.Param(jnp.array(2.0))
    gp, gx = nnx.grad(f, argnums=(0, 1))(p, 3.0)
    assert isinstance(gp, nnx.Param) and float(gp[...]) == 7.0
    assert float(gx) == 2.0


def test_custom_vjp_writes_are_committed_and_state_cotangents_flow():
    # Flax's graph-updates convention: the function may write its arguments; the
    # cotangent of their state after the call reaches bwd as `inputs_g`.
    class Two(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.array(3.0))
            self.n = nnx.BatchStat(jnp.array(0, jnp.int32))

    @nnx.custom_vjp
    def f(m, x):
        m.n[...] += 1
        return m.w[...] * x

    def fwd(m, x):
        return f(m, x), (m.w[...], x)

    seen = {}

    def bwd(res, g):
        (m_g, _), out_g = g
        seen["w_g"] = m_g["w"][...]  # cotangent of m.w as read after the call
        w, x = res
        return nnx.State({"w": out_g * x + m_g["w"][...]}), out_g * w

    f.defvjp(fwd, bwd)
    m = Two()
    np.testing.assert_allclose(f(m, 2.0), 6.0)
    assert int(m.n[...]) == 1

    def loss(m, x):
        return f(m, x) + 10.0 * m.w[...]  # m.w used after the call too

    gm, gx = nnx.grad(loss, argnums=(0, 1))(m, 2.0)
    assert int(m.n[...]) == 2
    np.testing.assert_allclose(seen["w_g"], 10.0)
    np.testing.assert_allclose(gm["w"][...], 2.0 + 10.0)
    np.testing.assert_allclose(gx, 3.0)


def test_custom_vjp_diff_state_in_nondiff_argnums():
    class Two(nnx.Module):
        def __init__(self):
            self.a = nnx.Param(jnp.array(2.0))
            self.b = nnx.Param(jnp.array(5.0))

    @nnx.custom_vjp(nondiff_argnums=(nnx.DiffState(0, nnx.PathContains("a")),))
    def f(m):
        return m.a[...] * m.b[...]

    f.defvjp(
        lambda m: (f(m), (m.a[...], m.b[...])), lambda res, g: (nnx.State({"a": g[1] * res[1], "b": 100.0}),)
    )
    g = nnx.grad(f, argnums=nnx.DiffState(0, ...))(Two())
    np.testing.assert_allclose(g["a"][...], 5.0)
    np.testing.assert_allclose(g["b"][...], 0.0)  # not differentiable: bwd's value dropped
