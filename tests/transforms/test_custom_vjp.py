"""`nnx.custom_vjp` with graph updates off (`graph_updates=False`, `graph=False` or
`set_graph_updates(False)`): `bwd(*nondiff, res, out_g[, updates_g])`, checked against
plain `jax.custom_vjp` / `jax.grad` on the same numbers."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxfn as nnx


@dataclasses.dataclass
class Pair(nnx.Module):
    x: nnx.Param
    y: nnx.Param


def _pair() -> Pair:
    return Pair(nnx.Param(jnp.array(1.0)), nnx.Param(jnp.array(2.0)))


def _reference(x: float, y: float) -> tuple:
    """d/dx, d/dy of sin(x) * y, with a custom rule that scales dx by 3 (so the rule is seen)."""

    @jax.custom_vjp
    def f(x, y):
        return jnp.sin(x) * y

    f.defvjp(lambda x, y: (f(x, y), (x, y)), lambda r, g: (3 * jnp.cos(r[0]) * g * r[1], jnp.sin(r[0]) * g))
    return jax.grad(f, argnums=(0, 1))(x, y)


@pytest.mark.parametrize(
    "flags", [dict(graph_updates=False), dict(graph=False), dict(graph=True, graph_updates=False)]
)
def test_bwd_gets_out_cotangent_and_returns_module_tangent(flags):
    @nnx.custom_vjp(**flags)
    def f(m):
        return jnp.sin(m.x) * m.y

    def f_fwd(m):
        return f(m), (jnp.cos(m.x), jnp.sin(m.x), m)

    def f_bwd(res, g):
        cos_x, sin_x, m = res
        assert g.shape == ()
        m_g = jax.tree.map(lambda a: a, m)
        m_g.x[...] = 3 * cos_x * g * m.y
        m_g.y[...] = sin_x * g
        return (m_g,)

    f.defvjp(f_fwd, f_bwd)
    grads = nnx.grad(f)(_pair())
    gx, gy = _reference(1.0, 2.0)
    np.testing.assert_allclose(grads["x"][...], gx, rtol=1e-6)
    np.testing.assert_allclose(grads["y"][...], gy, rtol=1e-6)


def test_set_graph_updates_false_selects_the_convention_at_definition():
    with nnx.set_graph_updates(False):

        @nnx.custom_vjp
        def f(x):
            return x * 2

    f.defvjp(lambda x: (f(x), None), lambda res, g: (g * 10.0,))
    assert float(jax.grad(f)(1.0)) == 10.0


def test_state_arguments_and_nondiff_argnums():
    m = _pair()
    graphdef, sx, rest = nnx.split(m, nnx.PathContains("x"), ...)

    @nnx.custom_vjp(nondiff_argnums=(1,), graph_updates=False)
    def f(sx, rest):
        m = nnx.merge(graphdef, sx, rest)
        return jnp.sin(m.x) * m.y

    def f_fwd(sx, rest):
        m = nnx.merge(graphdef, sx, rest)
        return f(sx, rest), (jnp.cos(m.x), sx)

    def f_bwd(rest, res, g):
        cos_x, sx = res
        m = nnx.merge(graphdef, sx, rest)
        sx_g = jax.tree.map(lambda a: a, sx)
        sx_g["x"][...] = 3 * cos_x * g * m.y
        return (sx_g,)

    f.defvjp(f_fwd, f_bwd)
    grads = nnx.grad(f)(sx, rest)
    np.testing.assert_allclose(grads["x"][...], _reference(1.0, 2.0)[0], rtol=1e-6)


def test_updates_g_marks_written_variables_and_updates_commit():
    seen = {}

    @nnx.custom_vjp(graph_updates=False)
    def f(m, a):
        m.x[...] += 1
        return m.x[...] * m.y[...] * a

    def f_fwd(m, a):
        return f(m, a), (m, a)

    def f_bwd(res, g, updates_g):
        seen["updates_g"] = updates_g
        m, a = res
        m_g = nnx.clone(m)
        m_g.x[...] = g * m.y[...] * a
        m_g.y[...] = g * m.x[...] * a
        return m_g, g * m.x[...] * m.y[...]

    f.defvjp(f_fwd, f_bwd)
    m = _pair()
    gm, ga = nnx.grad(f, argnums=(0, 1))(m, jnp.array(3.0))
    up_m, up_a = seen["updates_g"]
    assert up_a is None  # not a graph object
    assert isinstance(up_m, Pair) and isinstance(up_m.x, nnx.Param) and up_m.y is None
    assert float(m.x[...]) == 2.0  # the write inside is committed
    # reference: x' = x + 1, out = x' * y * a, the bwd above reads the residual m (x' = 2)
    np.testing.assert_allclose(gm["x"][...], 2.0 * 3.0)
    np.testing.assert_allclose(gm["y"][...], 2.0 * 3.0)
    np.testing.assert_allclose(ga, 2.0 * 2.0)


def test_unwritten_state_used_after_the_call_keeps_its_own_gradient():
    @nnx.custom_vjp(graph_updates=False)
    def f(m):
        return m.x[...] * 1.0

    f.defvjp(lambda m: (f(m), None), lambda res, g: (nnx.State({"x": g * 5.0, "y": jnp.zeros(())}),))

    def loss(m):
        return f(m) + m.y[...] * m.x[...]

    grads = nnx.grad(loss)(_pair())
    np.testing.assert_allclose(grads["x"][...], 5.0 + 2.0)
    np.testing.assert_allclose(grads["y"][...], 1.0)


@pytest.mark.parametrize("flags", [dict(graph_updates=False), dict()])
def test_returned_new_module_gets_a_module_shaped_cotangent(flags):
    seen = {}

    @nnx.custom_vjp(**flags)
    def f(m1, m2):
        return jnp.sin(m1.x) * m1.y, nnx.clone(m2)

    def f_fwd(m1, m2):
        return f(m1, m2), (jnp.cos(m1.x), jnp.sin(m1.x), m1)

    def f_bwd(res, g):
        y_g, m2_g = g[1] if not flags else g  # graph-updates form: (inputs_g, out_g)
        seen["m2_g"] = m2_g
        cos_x, sin_x, m1 = res
        return nnx.State({"x": cos_x * y_g * m1.y, "y": sin_x * y_g}), m2_g

    f.defvjp(f_fwd, f_bwd)
    m1 = _pair()
    m2 = Pair(nnx.Param(jnp.array(3.0)), nnx.Param(jnp.array(4.0)))

    def loss(m1, m2):
        y, m2_out = f(m1, m2)
        assert m2_out is not m2 and isinstance(m2_out, Pair)
        return y + m2_out.x * m2_out.y

    g1, g2 = nnx.grad(loss, argnums=(0, 1))(m1, m2)
    assert isinstance(seen["m2_g"], Pair)
    np.testing.assert_allclose(g1["x"][...], np.cos(1.0) * 2.0, rtol=1e-6)
    np.testing.assert_allclose(g1["y"][...], np.sin(1.0), rtol=1e-6)
    np.testing.assert_allclose(g2["x"][...], 4.0)
    np.testing.assert_allclose(g2["y"][...], 3.0)
    # called outside differentiation, the returned module is a fresh copy with m2's values
    _, out = f(m1, m2)
    assert out is not m2 and float(out.x[...]) == 3.0
