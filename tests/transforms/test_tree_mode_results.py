"""Flax's tree-mode results (`graph=False`, `graph_updates=False`, the switches, the
environment variables): gradients, cotangents and tangents shaped like the Module,
equal value for value to graph mode's States; only Variable values leave a
transform; the default (graph mode) results unchanged."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxfn as nnx

TREE_FLAGS = [dict(graph=False), dict(graph=True, graph_updates=False), dict(graph_updates=False)]
X = jnp.array([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]])


class Block(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.linear = nnx.Linear(2, 3, rngs=rngs)
        self.norm = nnx.LayerNorm(3, rngs=rngs)
        self.heads = [nnx.Linear(3, 1, rngs=rngs), nnx.Linear(3, 1, rngs=rngs)]

    def __call__(self, x):
        h = self.norm(self.linear(x))
        return self.heads[0](h) * self.heads[1](h)


def _loss(m, x):
    return jnp.mean(m(x) ** 2)


def _flat(tree) -> dict:
    """{path: array} of a State or of a Module-shaped gradient."""
    state = tree if isinstance(tree, nnx.State) else nnx.state(tree)
    return {path: np.asarray(v.get_value()) for path, v in nnx.to_flat_state(state)}


# -- grad / value_and_grad -------------------------------------------------------------------------
@pytest.mark.parametrize("flags", TREE_FLAGS)
def test_tree_mode_grad_equals_graph_mode_value_for_value(flags):
    m = Block(nnx.Rngs(0))
    graph_grads = nnx.grad(_loss)(m, X)  # default: a State of the Params
    tree_grads = nnx.grad(_loss, **flags)(m, X)

    assert isinstance(graph_grads, nnx.State)
    assert type(tree_grads) is Block and tree_grads is not m
    assert type(tree_grads.linear) is nnx.Linear and type(tree_grads.heads) is list
    assert type(tree_grads.linear.kernel) is nnx.Param
    assert tree_grads.linear.in_features == 2  # static attributes copied over
    assert tree_grads.linear.kernel.shape == (2, 3)
    assert _flat(tree_grads).keys() == _flat(graph_grads).keys()  # LayerNorm scale/bias are Params
    for path, g in _flat(graph_grads).items():
        np.testing.assert_allclose(_flat(tree_grads)[path], g, rtol=1e-6)
    # against JAX on the raw arrays
    graphdef, params = nnx.split(m)
    ref = jax.grad(lambda p: _loss(nnx.merge(graphdef, p), X))(params)
    np.testing.assert_allclose(tree_grads.heads[1].kernel[...], ref["heads"][1]["kernel"][...], rtol=1e-6)


def test_tree_mode_differentiates_every_leaf_as_flax():
    m = nnx.Dict(
        a=nnx.List([nnx.Param(jnp.array(10.0)), nnx.BatchStat(jnp.array(20.0))]),
        b=nnx.Param(jnp.array(10.0)),
        c=7,
    )

    def f(m):
        return m.a[0] * m.a[1] + 3 * m.b

    graph_grads = nnx.grad(f)(m)
    assert set(_flat(graph_grads)) == {("a", 0), ("b",)}  # Params only
    tree_grads = nnx.grad(f, graph=False)(m)
    assert type(tree_grads) is nnx.Dict and tree_grads.c == 7
    assert type(tree_grads.a[1]) is nnx.BatchStat
    np.testing.assert_allclose(
        [tree_grads.a[0][...], tree_grads.a[1][...], tree_grads.b[...]], [20.0, 10.0, 3.0]
    )
    nnx.update(m, nnx.state(tree_grads))  # its State fits the model
    assert float(m.a[1][...]) == 10.0


def test_gradient_has_the_arguments_structure():
    m1, m2 = nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.Linear(3, 1, rngs=nnx.Rngs(1))
    w = nnx.Param(jnp.array(2.0))

    def f(x, ms, w):
        return jnp.sum(ms[1](ms[0](x))) * w

    gx, gms, gw = nnx.grad(f, argnums=(0, 1, 2), graph=False)(X, [m1, m2], w)
    assert gx.shape == X.shape and type(gms) is list and type(gw) is nnx.Param
    assert type(gms[0]) is nnx.Linear and type(gms[1]) is nnx.Linear
    ref_gx, ref_gms, ref_gw = nnx.grad(f, argnums=(0, 1, 2))(X, [m1, m2], w)  # graph mode
    np.testing.assert_allclose(gx, ref_gx, rtol=1e-6)
    np.testing.assert_allclose(gw[...], ref_gw[...], rtol=1e-6)
    np.testing.assert_allclose(gms[1].kernel[...], ref_gms[1]["kernel"][...], rtol=1e-6)


def test_value_and_grad_with_aux_commits_variable_writes():
    m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    kernel = m.kernel[...]

    def f(m):
        loss = jnp.sum(m.kernel[...] ** 2)
        m.kernel[...] = jnp.ones((2, 3))
        return loss, {"aux": 1}

    (loss, aux), grads = nnx.value_and_grad(f, has_aux=True, graph=False)(m)
    assert aux == {"aux": 1} and type(grads) is nnx.Linear
    np.testing.assert_allclose(loss, jnp.sum(kernel**2), rtol=1e-6)
    np.testing.assert_allclose(grads.kernel[...], 2 * kernel, rtol=1e-6)
    np.testing.assert_allclose(grads.bias[...], jnp.zeros(3))
    np.testing.assert_allclose(m.kernel[...], jnp.ones((2, 3)))  # the write reached the caller


def test_shared_variable_gradient_at_both_paths_without_graph_updates():
    p1, p2 = nnx.Param(10.0), nnx.Param(20.0)
    tree = dict(a=[p1, p2], b=p1)
    f = lambda t: t["a"][0] * t["a"][1] + t["b"]  # noqa: E731

    grads = nnx.grad(f, graph=True, graph_updates=False)(tree)
    assert grads["b"] is grads["a"][0] and type(grads["b"]) is nnx.Param  # one Variable, two paths
    assert len(jax.tree.leaves(grads)) == 3
    np.testing.assert_allclose([grads["a"][0][...], grads["a"][1][...]], [21.0, 10.0])
    graph_grads = nnx.grad(f)(tree)  # default: given once, at its first path
    assert len(jax.tree.leaves(graph_grads)) == 2
    with pytest.raises(
        ValueError, match=r"Duplicate Param found at paths:\n  - args\[0\]\.a\[0\]\n  - args\[0\]\.b"
    ):
        nnx.grad(f, graph=False)(tree)  # tree mode has no shared references


def test_int_leaf_error_names_the_path_and_allow_int_gives_float0():
    class Counted(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.ones(2))
            self.steps = nnx.BatchStat(jnp.array(0))

    m = Counted()
    with pytest.raises(
        TypeError, match=r"(?s)cannot differentiate args\[0\]\.steps \(dtype int32\).*allow_int=True"
    ):
        nnx.grad(lambda m: m.w[...].sum(), graph=False)(m)
    grads = nnx.grad(lambda m: m.w[...].sum(), graph=False, allow_int=True)(m)
    assert grads.steps[...].dtype == jax.dtypes.float0
    np.testing.assert_allclose(grads.w[...], jnp.ones(2))
    assert set(nnx.grad(lambda m: m.w[...].sum())(m)) == {"w"}  # graph mode: Params only, no error


def test_tree_mode_grads_fit_the_model_as_a_pytree():
    m = Block(nnx.Rngs(0))

    @nnx.jit(graph=False)
    def step(m, x):
        grads = nnx.grad(_loss, graph=False)(m, x)
        return jax.tree.map(lambda p, g: p - 0.1 * g, m, grads)

    graph_grads = nnx.grad(_loss)(m, X)
    new = step(m, X)
    assert type(new) is Block and new is not m
    np.testing.assert_allclose(
        new.linear.kernel[...], m.linear.kernel[...] - 0.1 * graph_grads["linear"]["kernel"][...], rtol=1e-6
    )


def test_switches_and_decorator_form_decide_when_made():
    m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    loss = lambda m: m.kernel[...].sum()  # noqa: E731
    with nnx.set_graph_updates(False):
        made_inside = nnx.grad(loss)
        decorated = nnx.grad(graph=True, graph_updates=True)(loss)
    assert type(made_inside(m)) is nnx.Linear  # the switch was off when it was made
    assert isinstance(decorated(m), nnx.State)  # explicit flags win, also as a decorator
    assert isinstance(nnx.grad(loss)(m), nnx.State)  # the default again


def test_environment_variable_sets_the_default():
    code = (
        "import nnxfn as nnx, jax.numpy as jnp\n"
        "m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))\n"
        "print(nnx.set_graph_mode.current_value(), type(nnx.grad(lambda m: m.kernel[...].sum())(m)).__name__)\n"
    )
    env = {**os.environ, "NNX_GRAPH_MODE": "false", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "Linear"]
    env["NNX_GRAPH_MODE"] = "maybe"
    bad = subprocess.run([sys.executable, "-c", "import nnxfn"], env=env, capture_output=True, text=True)
    assert "Invalid value 'maybe' for the environment variable NNX_GRAPH_MODE" in bad.stderr


# -- vjp / jvp ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags", TREE_FLAGS)
def test_vjp_cotangents_shaped_like_the_primals(flags):
    m = Block(nnx.Rngs(0))
    out, pullback = nnx.vjp(_loss, m, X, **flags)
    g_m, g_x = pullback(jnp.array(1.0))
    np.testing.assert_allclose(out, _loss(m, X), rtol=1e-6)
    assert type(g_m) is Block and g_x.shape == X.shape
    ref_m, ref_x = jax.grad(_loss, argnums=(0, 1))(m, X)  # JAX over the Module as a pytree
    np.testing.assert_allclose(g_x, ref_x, rtol=1e-6)
    for path, g in _flat(ref_m).items():
        np.testing.assert_allclose(_flat(g_m)[path], g, rtol=1e-6)


def test_jvp_takes_and_gives_module_shaped_tangents():
    m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    tangent = jax.tree.map(jnp.ones_like, m)
    out, t_out = nnx.jvp(lambda m, x: m(x).sum(), (m, X), (tangent, jnp.zeros_like(X)), graph=False)
    np.testing.assert_allclose(out, m(X).sum(), rtol=1e-6)
    # d/dt sum((x @ (K + t)) + (b + t)) = sum(x @ ones) + n * 3
    np.testing.assert_allclose(t_out, X.sum() * 3 + X.shape[0] * 3, rtol=1e-6)
    partial = nnx.State({"kernel": nnx.Param(jnp.ones((2, 3)))})  # no tangent for the bias
    with pytest.raises(ValueError, match=r"no tangent for args\[0\]\.bias.*every leaf"):
        nnx.jvp(lambda m: m(X).sum(), (m,), (partial,), graph=False)


# -- which writes leave a tree-mode transform ----------------------------------------------------------
class Swappable(nnx.Module):
    def __init__(self):
        self.a = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
        self.b = nnx.Linear(2, 2, rngs=nnx.Rngs(1))
        self.calls = 0
        self.log = [nnx.BatchStat(jnp.zeros(()))]


def _restructure(m):
    m.a, m.b = m.b, m.a  # dropped without graph updates
    m.calls += 1  # static: dropped
    m.log.append(nnx.BatchStat(jnp.ones(())))  # dropped
    m.extra = nnx.Param(jnp.ones(1))  # dropped
    m.a.bias[...] = jnp.full((2,), 7.0, jnp.float32)  # a Variable value: kept (`b`'s bias now)
    return jnp.sum(m.a.kernel[...])


@pytest.mark.parametrize(
    "run",
    [
        lambda m, kw: nnx.jit(_restructure, **kw)(m),
        lambda m, kw: nnx.grad(_restructure, **kw)(m),
        lambda m, kw: nnx.remat(_restructure, **kw)(m),
        lambda m, kw: nnx.cond(True, _restructure, _restructure, m, **kw),
    ],
    ids=["jit", "grad", "remat", "cond"],
)
def test_only_variable_values_leave_without_graph_updates(run):
    m = Swappable()
    a, b = m.a, m.b
    run(m, dict(graph=True, graph_updates=False))
    assert m.a is a and m.b is b and m.calls == 0 and len(m.log) == 1 and not hasattr(m, "extra")
    np.testing.assert_allclose(b.bias[...], [7.0, 7.0])
    np.testing.assert_allclose(a.bias[...], [0.0, 0.0])


def test_graph_updates_still_committed_by_default():
    m = Swappable()
    a, b = m.a, m.b
    nnx.jit(_restructure)(m)
    assert m.a is b and m.b is a and m.calls == 1 and len(m.log) == 2 and hasattr(m, "extra")


def test_dropped_updates_cause_no_retrace_and_nothing_half_applied():
    m = Swappable()
    a = m.a
    traces = []

    @nnx.jit(graph_updates=False)
    def f(m):
        traces.append(1)
        _restructure(m)

    f(m)
    f(m)
    assert len(traces) == 1 and m.a is a  # the structure did not move: the cached trace is used

    def fails(m):
        m.a.kernel[...] = jnp.zeros((2, 2))
        _restructure(m)
        raise RuntimeError("boom")

    kernel, bias = a.kernel[...], m.b.bias[...]
    for run in (
        nnx.jit(fails, graph=False),
        nnx.grad(fails, graph=False),
        nnx.vmap(fails, in_axes=None, axis_size=2, graph=False),
    ):
        with pytest.raises(RuntimeError, match="boom"):
            run(m)
        assert m.a is a and m.calls == 0 and not hasattr(m, "extra")
        np.testing.assert_allclose(a.kernel[...], kernel)  # nothing half-applied
        np.testing.assert_allclose(m.b.bias[...], bias)


# -- remat / custom_vjp ----------------------------------------------------------------------------
def test_remat_inside_tree_mode_grad():
    m = Block(nnx.Rngs(0))
    checkpointed = nnx.remat(lambda m, x: m(x), graph=False)
    grads = nnx.grad(lambda m, x: jnp.mean(checkpointed(m, x) ** 2), graph=False)(m, X)
    assert type(grads) is Block
    for path, g in _flat(nnx.grad(_loss)(m, X)).items():
        np.testing.assert_allclose(_flat(grads)[path], g, rtol=1e-6)


@dataclasses.dataclass
class Pair(nnx.Module):
    x: nnx.Param
    y: nnx.Param
    z: int


def test_custom_vjp_tree_mode_round_trip():
    @nnx.custom_vjp(graph=False)
    def f(m):
        return jnp.sin(m.x[...]) * m.y[...]

    def f_fwd(m):
        m.z += 1  # a structural write in fwd: dropped in tree mode, as one in `f`
        return f(m), (jnp.cos(m.x[...]), m)

    def f_bwd(res, g):  # tree mode: the output cotangent alone, a Module-shaped tangent back
        cos_x, m = res
        assert type(m) is Pair
        m_g = jax.tree.map(lambda a: a, m)
        m_g.x[...] = 3 * cos_x * g * m.y[...]  # 3x: the rule is seen
        m_g.y[...] = jnp.sin(m.x[...]) * g
        return (m_g,)

    f.defvjp(f_fwd, f_bwd)
    m = Pair(nnx.Param(jnp.array(1.0)), nnx.Param(jnp.array(2.0)), 0)
    grads = nnx.grad(f, graph=False)(m)
    assert type(grads) is Pair and m.z == 0
    np.testing.assert_allclose([grads.x[...], grads.y[...]], [3 * np.cos(1.0) * 2.0, np.sin(1.0)], rtol=1e-6)


# -- loops: the carry comes back as a pytree ----------------------------------------------------------
def test_loop_carry_is_a_new_object_holding_the_callers_variables():
    class Acc(nnx.Module):
        def __init__(self):
            self.total = nnx.BatchStat(jnp.array(0.0))

    def add(m, x):
        m.total[...] += x
        return m, x

    runs = {
        "scan": lambda m, kw: nnx.scan(add, in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0), **kw)(
            m, jnp.arange(3.0)
        )[0],
        "fori_loop": lambda m, kw: nnx.fori_loop(0, 3, lambda i, m: add(m, i * 1.0)[0], m, **kw),
        "while_loop": lambda m, kw: nnx.while_loop(
            lambda m: m.total[...] < 3.0, lambda m: add(m, 1.0)[0], m, **kw
        ),
    }
    for name, run in runs.items():
        m = Acc()
        assert run(m, {}) is m, name  # graph mode: the caller's own object
        for kw in TREE_FLAGS:
            m = Acc()
            out = run(m, kw)
            assert out is not m and out.total is m.total, name
            assert float(m.total[...]) == 3.0, name
