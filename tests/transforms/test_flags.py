"""Flax's mode flags and switches (they select Flax's results; the tree-mode
results themselves are in test_tree_mode_results.py), unknown keywords, and the
transform-level names added for Flax compatibility."""

from __future__ import annotations

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxfn as nnx
from tx_models import Counter

FLAGS = dict(graph=False, graph_updates=False)


# -- set_graph_mode / set_graph_updates ---------------------------------------------------------
@pytest.mark.parametrize("switch", [nnx.set_graph_mode, nnx.set_graph_updates])
def test_switch_values_nesting_and_restore(switch):
    assert switch.current_value() is True  # Flax's defaults
    with switch(False):
        assert switch.current_value() is False
        with switch(True):
            assert switch.current_value() is True
        assert switch.current_value() is False
    assert switch.current_value() is True


@pytest.mark.parametrize("switch", [nnx.set_graph_mode, nnx.set_graph_updates])
def test_switch_plain_call_persists_until_changed(switch):
    switch(False)
    try:
        assert switch.current_value() is False
        with switch(True):
            assert switch.current_value() is True
        assert switch.current_value() is False
    finally:
        switch(True)
    assert switch.current_value() is True


@pytest.mark.parametrize("switch", [nnx.set_graph_mode, nnx.set_graph_updates])
def test_switch_as_decorator_sets_value_only_during_the_call(switch):
    seen = []

    @switch(False)
    def f(x):
        seen.append(switch.current_value())
        return x + 1

    assert switch.current_value() is True  # decorating did not change it
    assert f(1) == 2
    assert seen == [False]
    assert switch.current_value() is True


def test_switches_are_independent_and_per_thread():
    seen = {}

    def other():
        seen["mode"] = nnx.set_graph_mode.current_value()

    with nnx.set_graph_mode(False):
        assert nnx.set_graph_updates.current_value() is True
        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert seen["mode"] is True  # another thread keeps the default


def test_switches_select_tree_mode_and_variable_writes_still_commit():
    m = Counter()
    x = jnp.arange(3.0)
    with nnx.set_graph_mode(False), nnx.set_graph_updates(False):
        out = nnx.jit(lambda m, x: m(x))(m, x)
        grads = nnx.grad(lambda m: m(x).sum(), allow_int=True)(m)
    np.testing.assert_allclose(out, x * m.w[...])
    assert int(m.count[...]) == 2  # Variable values leave tree-mode transforms too
    assert type(grads) is Counter  # made under set_graph_mode(False): a tree-mode grad
    np.testing.assert_allclose(grads.w[...], x)


# -- every transform accepts graph= / graph_updates= ----------------------------------------------
def _module_fn(m, x):
    return m(x).sum()


def test_transforms_accept_flags():
    x = jnp.arange(3.0)

    m = Counter()
    np.testing.assert_allclose(nnx.jit(_module_fn, **FLAGS)(m, x), (x * m.w[...]).sum())
    np.testing.assert_allclose(nnx.jit(**FLAGS)(_module_fn)(m, x), (x * m.w[...]).sum())
    g = nnx.grad(_module_fn, allow_int=True, **FLAGS)(m, x)  # tree mode: shaped like the Module
    np.testing.assert_allclose(g.w[...], x)
    v, g = nnx.value_and_grad(_module_fn, allow_int=True, **FLAGS)(m, x)
    np.testing.assert_allclose(g.w[...], x)
    out, pullback = nnx.vjp(lambda m: m(x).sum(), m, **FLAGS)
    np.testing.assert_allclose(pullback(jnp.array(1.0))[0].w[...], x)
    _, t = nnx.jvp(lambda x: (x**2).sum(), (x,), (jnp.ones(3),), **FLAGS)
    np.testing.assert_allclose(t, 2 * x.sum())
    np.testing.assert_allclose(nnx.remat(_module_fn, **FLAGS)(m, x), (x * m.w[...]).sum())
    np.testing.assert_allclose(nnx.vmap(lambda x: x * 2, **FLAGS)(x), x * 2)
    c, ys = nnx.scan(lambda c, x: (c + x, c), **FLAGS)(0.0, x)
    assert float(c) == 3.0
    assert float(nnx.cond(True, lambda x: x + 1, lambda x: x - 1, 1.0, **FLAGS)) == 2.0
    assert float(nnx.switch(1, [lambda x: x, lambda x: x * 3], 2.0, **FLAGS)) == 6.0
    assert int(nnx.while_loop(lambda v: v < 5, lambda v: v + 2, 0, **FLAGS)) == 6
    assert int(nnx.fori_loop(0, 4, lambda i, v: v + i, 0, **FLAGS)) == 6
    shapes = nnx.eval_shape(lambda x: x[:2], x, **FLAGS)
    assert shapes.shape == (2,)
    err, out = nnx.checkify(lambda x: x * 2, **FLAGS)(x)
    np.testing.assert_allclose(out, x * 2)
    assert "mul" in str(nnx.make_jaxpr(lambda x: x * 2, **FLAGS)(x))
    mesh = jax.sharding.Mesh(jax.devices()[:1], ("d",))
    P = jax.sharding.PartitionSpec
    out = nnx.shard_map(lambda x: x + 1, mesh=mesh, in_specs=(P(),), out_specs=P(), **FLAGS)(x)
    np.testing.assert_allclose(out, x + 1)
    f = nnx.pmap(lambda x: x * 2, axis_size=1, devices=jax.devices()[:1], **FLAGS)
    np.testing.assert_allclose(f(x[None]), x[None] * 2)
    assert int(m.count[...]) == 6  # jit twice, grad, value_and_grad, vjp, remat


def test_custom_vjp_accepts_flags():
    @nnx.custom_vjp(**FLAGS)
    def f(x):
        return x * 2

    # with graph updates off (as here), bwd gets the output cotangent alone, as in Flax
    f.defvjp(lambda x: (f(x), None), lambda res, g: (g * 10.0,))
    assert float(jax.grad(f)(1.0)) == 10.0


# -- unknown keyword arguments raise --------------------------------------------------------------
@pytest.mark.parametrize(
    "make",
    [
        lambda: nnx.scan(lambda c, x: (c, x), lenght=3),
        lambda: nnx.scan(lambda c, x: (c, x), revers=True),
        lambda: nnx.jit(lambda x: x, static_argnum=0),
        lambda: nnx.jit(static_argnum=0),
        lambda: nnx.vmap(lambda x: x, in_axis=0),
        lambda: nnx.pmap(lambda x: x, in_axis=0),
        lambda: nnx.grad(lambda x: x, argnum=0),
        lambda: nnx.value_and_grad(lambda x: x, has_aux_=True),
        lambda: nnx.remat(lambda x: x, prevent_cs=True),
        lambda: nnx.custom_vjp(lambda x: x, nondiff_argnum=(0,)),
        lambda: nnx.shard_map(lambda x: x, mesh=None, in_specs=(), out_specs=(), check_rep=True),
        lambda: nnx.make_jaxpr(lambda x: x, static_argnum=0),
        lambda: nnx.checkify(lambda x: x, error=None),
        lambda: nnx.cond(True, lambda: 1, lambda: 2, graphs=True),
        lambda: nnx.switch(0, [lambda: 1], graphs=True),
        lambda: nnx.while_loop(lambda v: False, lambda v: v, 0, graphs=True),
        lambda: nnx.fori_loop(0, 1, lambda i, v: v, 0, unrol=2),
        lambda: nnx.vjp(lambda x: x, 1.0, has_au=True),
        lambda: nnx.jvp(lambda x: x, (1.0,), (1.0,), has_au=True),
        lambda: nnx.eval_shape(lambda x: x, 1.0, graph_update=False),
        lambda: nnx.jit_partial(lambda x: x, donate_argnum=0),
        lambda: nnx.cached_partial(lambda x: x, 1, graph_update=True),
        lambda: nnx.transform_metadata(lambda x: x, partition="a", in_axis=0),
        lambda: nnx.prefix({"a": 1}, {...: 0}, graph_mode=True),
    ],
)
def test_unknown_keyword_raises_type_error(make):
    with pytest.raises(TypeError):
        make()


def test_misspelled_scan_option_is_not_ignored():
    # issue 13: `nnx.scan(f, lenght=3, revers=True)` used to run and ignore both
    with pytest.raises(TypeError, match="lenght"):
        nnx.scan(lambda c, x: (c, x), lenght=3, revers=True)


# -- jit_partial / cached_partial -----------------------------------------------------------------
def test_jit_partial_binds_leading_arguments_and_commits():
    m = Counter()
    f = nnx.jit_partial(lambda m, x: m(x), m, **FLAGS)
    x = jnp.arange(3.0)
    np.testing.assert_allclose(f(x), x * m.w[...])
    np.testing.assert_allclose(f(x), x * m.w[...])
    assert int(m.count[...]) == 2
    compiled = f.lower(x).compile()
    np.testing.assert_allclose(compiled(x), x * m.w[...])
    assert int(m.count[...]) == 3
    np.testing.assert_allclose(m.total[...], 3 * x)


def test_jit_partial_static_argnames_by_position():
    traces = []

    def fn(x, scale, relu):
        traces.append(relu)
        y = x * scale
        return jnp.maximum(y, 0) if relu else y

    f = nnx.jit_partial(fn, jnp.array([-1.0, 2.0]), static_argnames="relu")
    np.testing.assert_allclose(f(2.0, True), [0.0, 4.0])
    np.testing.assert_allclose(f(2.0, False), [-2.0, 4.0])
    assert traces == [True, False]


def test_cached_partial_shares_variables_and_reuses_its_copies():
    m = Counter()

    @nnx.jit
    def step(cached, other, x):
        assert cached is not other and cached.w is other.w  # one Variable, two objects
        cached(x)
        return cached

    f = nnx.cached_partial(step, m)
    out1 = f(m, jnp.ones(3))
    out2 = f(m, jnp.ones(3))
    assert out1 is out2 and out1 is not m
    assert out1.w is m.w and out1.count is m.count
    assert int(m.count[...]) == 2


@pytest.mark.parametrize("kw", [dict(graph=False), dict(graph_updates=False)])
def test_cached_partial_is_graph_mode_only(kw):
    with pytest.raises(ValueError, match="cached_partial is a graph-mode API.*nnx.compat.cached_partial"):
        nnx.cached_partial(lambda m: m, Counter(), **kw)
    with nnx.set_graph_updates(False), pytest.raises(ValueError, match="graph_updates=False"):
        nnx.cached_partial(lambda m: m, Counter())
    m = Counter()
    with nnx.set_graph_mode(False):  # compat sets both flags
        f = nnx.compat.cached_partial(nnx.jit(lambda m, x: m(x)), m)
    f(jnp.ones(3))
    assert int(m.count[...]) == 1


# -- prefix ------------------------------------------------------------------------------------------
def test_transform_metadata_removes_and_inserts_the_axis_name():
    inside = []

    def make(rngs):
        m = nnx.Linear(
            2,
            3,
            rngs=rngs,
            kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), ("din", "dout")),
        )
        inside.append(m.kernel.out_sharding)
        return m

    f = nnx.vmap(
        nnx.transform_metadata(make, in_axes=0, out_axes=0, partition="layers"), in_axes=0, out_axes=0
    )
    m = nnx.split_rngs(splits=4)(f)(nnx.Rngs(0))
    assert set(inside) == {("din", "dout")}  # inside: without the mapped axis
    assert m.kernel.shape == (4, 2, 3)
    assert m.kernel.out_sharding == ("layers", "din", "dout")

    @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
    @nnx.transform_metadata(in_axes=(0, nnx.Carry), out_axes=nnx.Carry, partition="layers")
    def forward(layer, x):
        inside.append(layer.kernel.out_sharding)
        return x

    forward(m, jnp.ones((2,)))
    assert inside[-1] == ("din", "dout")
    assert m.kernel.out_sharding == ("layers", "din", "dout")


# -- StateAxes reads like Flax's mapping ---------------------------------------------------------------
def test_state_axes_mapping_api():
    sa = nnx.StateAxes({nnx.Param: 0, ...: None})
    assert list(sa.items()) == [(nnx.Param, 0), (..., None)]
    assert sa.filters == (nnx.Param, ...) and sa.axes == (0, None)
    assert sa[nnx.Param] == 0 and len(sa) == 2
    assert sa == nnx.StateAxes({nnx.Param: 0, ...: None}) and hash(sa) == hash(
        nnx.StateAxes({nnx.Param: 0, ...: None})
    )
    assert sa.map_prefix(("w",), nnx.Param(1.0)) == 0
    from_state = nnx.StateAxes(nnx.State({"a": 1, "b": None}))
    assert from_state.map_prefix(("a",), None) == 1
    assert from_state.map_prefix(("b",), None) is None


# -- split/merge/update contexts -------------------------------------------------------------------------
def test_split_merge_contexts_share_references():
    m = Counter()
    with nnx.split_context() as ctx:
        g1, s1 = ctx.split(m)
        g2, s2 = ctx.split(m)
    assert len(s1.flat_state()) == 3 and len(s2.flat_state()) == 0
    with nnx.merge_context() as ctx:
        a = ctx.merge(g1, s1)
        b = ctx.merge(g2, s2)
    assert a is b and a is not m
    np.testing.assert_allclose(a.w[...], m.w[...])


def test_update_context_round_trip_updates_the_original_objects():
    m = Counter()
    w = m.w
    with nnx.update_context("t"):
        assert nnx.current_update_context("t").tag == "t"
        with nnx.split_context("t") as ctx:
            g, s = ctx.split(m)

        @jax.jit
        def f(g, s):
            with nnx.merge_context("t", True) as ctx:
                inner = ctx.merge(g, s)
            inner(jnp.ones(3))
            inner.w, inner.total = inner.total, inner.w  # swap two Variables
            with nnx.split_context("t") as ctx:
                return ctx.split(inner)

        g, s = f(g, s)
        with nnx.merge_context("t", False) as ctx:
            out = ctx.merge(g, s)
    assert out is m
    assert m.total is w  # the caller's own Variable objects, swapped
    assert int(m.count[...]) == 1
    np.testing.assert_allclose(m.w[...], jnp.ones(3))
    with pytest.raises(ValueError, match="No update context"):
        nnx.current_update_context("t")


# -- general.split_inputs / merge_inputs -----------------------------------------------------------------
def test_split_merge_inputs_around_plain_jax_transforms():
    from nnxfn.transforms import general

    m = Counter()

    @general.split_inputs
    @jax.jit
    @general.merge_inputs
    def forward(m, x):
        return m(x)

    np.testing.assert_allclose(forward(m, jnp.ones(3)), m.w[...])
    assert int(m.count[...]) == 1

    @general.merge_inputs
    def bump(m):
        m.count[...] += 10

    @general.merge_inputs
    def keep(m):
        pass

    general.split_inputs(jax.lax.cond)(True, bump, keep, m)
    general.split_inputs(jax.lax.cond)(False, bump, keep, m)
    assert int(m.count[...]) == 11


# -- compat ------------------------------------------------------------------------------------------------
def test_compat_pins_graph_mode_with_graph_updates():
    assert nnx.compat.jit is nnx.compat.jit  # made once
    assert nnx.compat.jit.func is nnx.jit and nnx.compat.jit.keywords == dict(graph=True, graph_updates=True)
    assert nnx.compat.split.keywords == dict(graph=True)
    assert nnx.compat.Optimizer is nnx.Optimizer
    assert not hasattr(nnx.compat, "Linear")  # only the mode-dependent functions, as in Flax
    with pytest.raises(AttributeError):
        nnx.compat.no_such_name
    m = Counter()
    x = jnp.arange(3.0)
    with nnx.set_graph_mode(False), nnx.set_graph_updates(False):
        grads = nnx.compat.grad(_module_fn)(m, x)  # graph mode despite the switches
        assert isinstance(grads, nnx.State) and set(grads) == {"w"}
        grads = nnx.compat.grad(_module_fn, graph=False, allow_int=True)(m, x)  # a flag still wins
        assert type(grads) is Counter
    ((stream, key),) = nnx.compat.backup_keys(nnx.Rngs(3))  # lives in nnx.rnglib, as in Flax
    assert key.shape == ()
