"""Transforms in Flax's tree mode (`graph=False`) or with `graph_updates=False` raise
Flax's errors (Variable aliasing, prefix kinds); the same inputs keep working,
with the same results, in the default mode."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxfn as nnx

TREE = dict(graph=False)
NO_UPDATES = dict(graph=True, graph_updates=False)
P = jax.sharding.PartitionSpec


class Pair(nnx.Module):
    def __init__(self, a, b):
        self.a = a
        self.b = b


def _shared():
    v = nnx.Param(jnp.array(1.0))
    return v, Pair(v, v)


def _add(m):
    m.a[...] += 1.0


def _mesh():
    return jax.sharding.Mesh(jax.devices()[:1], ("d",))


# -- the same Variable passed twice -------------------------------------------------------------------
SHARED_CALLS = {
    "jit": lambda kw, m: nnx.jit(_add, **kw)(m),
    "cond": lambda kw, m: nnx.cond(True, _add, _add, m, **kw),
    "switch": lambda kw, m: nnx.switch(0, (_add, _add), m, **kw),
    "vmap": lambda kw, m: nnx.vmap(_add, in_axes=None, out_axes=None, axis_size=2, **kw)(m),
    "grad": lambda kw, m: nnx.grad(lambda m: (m.a[...] * m.b[...]).sum(), **kw)(m),
    "remat": lambda kw, m: nnx.remat(_add, **kw)(m),
    "eval_shape": lambda kw, m: nnx.eval_shape(_add, m, **kw),
    "checkify": lambda kw, m: nnx.checkify(_add, **kw)(m),
    "shard_map": lambda kw, m: nnx.shard_map(_add, mesh=_mesh(), in_specs=(P(),), out_specs=P(), **kw)(m),
    "jit_partial": lambda kw, m: nnx.jit_partial(_add, m, **kw)(),
}


@pytest.mark.parametrize("name", sorted(SHARED_CALLS))
def test_tree_mode_rejects_a_shared_variable(name):
    _, m = _shared()
    with pytest.raises(
        ValueError, match=r"Duplicate Param found at paths:\n  - \w+\[0\]\.a\n  - \w+\[0\]\.b"
    ) as e:
        SHARED_CALLS[name](TREE, m)
    message = str(e.value)
    assert f"nnx.{name} with graph=False" in message
    assert "does not support Variable aliasing" in message and "graph_updates=True" in message


@pytest.mark.parametrize("name", sorted(set(SHARED_CALLS) - {"eval_shape"}))
def test_shared_variable_without_graph_updates_and_by_default(name):
    for kw in (NO_UPDATES, {}):
        v, m = _shared()
        SHARED_CALLS[name](kw, m)
        if name not in ("grad", "eval_shape"):
            assert float(v[...]) == 2.0  # written once through the shared Variable
        else:
            assert float(v[...]) == 1.0


def test_eval_shape_and_make_jaxpr_reject_sharing_also_without_graph_updates():
    v, m = _shared()
    with pytest.raises(ValueError, match="nnx.eval_shape with graph_updates=False: Duplicate Param"):
        nnx.eval_shape(lambda a, b: None, v, v, **NO_UPDATES)
    with pytest.raises(ValueError, match="nnx.make_jaxpr with graph_updates=False: Duplicate Param"):
        nnx.make_jaxpr(lambda a, b: a[...] + b[...], **NO_UPDATES)(v, v)
    assert nnx.eval_shape(lambda a, b: a[...] + b[...], v, v).shape == ()
    assert "add" in str(nnx.make_jaxpr(lambda a, b: a[...] + b[...])(v, v))


def test_tree_jit_rejects_shared_arguments_at_trace_time():
    v = nnx.Param(jnp.array(1.0))
    f = nnx.jit(lambda a, b: a[...] + b[...], graph=False)
    with pytest.raises(ValueError, match=r"found at paths:\n  - args\[0\]\n  - args\[1\]"):
        f(v, v)
    w = nnx.Param(jnp.array(2.0))
    assert float(f(v, w)) == 3.0  # distinct Variables: fine, and cached
    assert float(f(v, w)) == 3.0
    assert float(nnx.jit(lambda a, b: a[...] + b[...])(v, v)) == 2.0


def test_jit_partial_rejects_at_creation():
    v = nnx.Param(jnp.array(1.0))
    c1, c2 = Pair(v, 1), Pair(v, 2)
    with pytest.raises(
        ValueError,
        match=r"Duplicate Param found at paths:\n  - partial_args\[0\]\.a\n  - partial_args\[1\]\.a",
    ):
        nnx.jit_partial(lambda a, b, x: a.a[...] + x, c1, c2, graph=False, graph_updates=False)
    f = nnx.jit_partial(lambda a, b, x: a.a[...] + b.a[...] + x, c1, c2, **NO_UPDATES)
    assert float(f(jnp.array(1.0))) == 3.0


def test_set_graph_mode_false_applies_to_transforms_made_under_it():
    v = nnx.Param(jnp.array(1.0))
    with nnx.set_graph_mode(False):
        f = nnx.jit(lambda a, b: a[...] + b[...])
    with pytest.raises(ValueError, match="found at paths"):
        f(v, v)
    assert float(nnx.jit(lambda a, b: a[...] + b[...])(v, v)) == 2.0


# -- input Variables returned as outputs ------------------------------------------------------------------
@pytest.mark.parametrize("kw", [TREE, NO_UPDATES])
def test_returning_an_input_variable_raises(kw):
    v = nnx.Param(jnp.array(1.0))
    with pytest.raises(
        ValueError,
        match=r"Duplicate Param found at paths:\n  - args\[0\]\n  - out\n.*does not support Variable aliasing",
    ):
        nnx.jit(lambda v: v, **kw)(v)
    with pytest.raises(ValueError, match="does not support Variable aliasing"):
        nnx.eval_shape(lambda v: v, v, **kw)
    with pytest.raises(ValueError, match=r"- args\[0\]\.a\n  - out\[1\]\.a"):
        nnx.remat(lambda m: (1.0, m), **kw)(Pair(v, 2))
    assert nnx.jit(lambda v: v)(v) is v  # default: the caller's own Variable comes back


def test_tree_mode_rejects_one_new_variable_returned_twice():
    def make():
        w = nnx.Param(jnp.ones(2))
        return w, w

    with pytest.raises(ValueError, match=r"- out\[0\]\n  - out\[1\]"):
        nnx.jit(make, graph=False)()
    a, b = nnx.jit(make, **NO_UPDATES)()  # graph mode keeps the sharing
    assert a is b
    np.testing.assert_array_equal(a[...], jnp.ones(2))


def test_scan_carry_may_come_back_but_not_as_an_output():
    m = nnx.Linear(2, 2, rngs=nnx.Rngs(0))

    def body(c, x):
        return c, x * 2

    for kw in (TREE, NO_UPDATES):
        c, ys = nnx.scan(body, in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0), **kw)(m, jnp.arange(3.0))
        assert c is not m and c.kernel is m.kernel  # as Flax: a pytree holding the caller's Variables
        np.testing.assert_array_equal(ys, jnp.arange(3.0) * 2)
        with pytest.raises(ValueError, match=r"- args\[0\]\.bias\n  - out\[1\]\.bias"):
            nnx.scan(lambda c, x: (c, c), in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0), **kw)(
                m, jnp.ones(3)
            )
    v = nnx.Param(jnp.arange(5))
    with pytest.raises(ValueError, match="does not support Variable aliasing"):
        nnx.scan(lambda c: c, in_axes=0, out_axes=0, **NO_UPDATES)(v)


# -- grad: one Variable differentiated and not --------------------------------------------------------------
def test_grad_inconsistent_aliasing_without_graph_updates():
    v = nnx.Param(jnp.array(3.0))

    def f(a, b):
        return a[...] * b[...]

    with pytest.raises(
        ValueError,
        match=r"Inconsistent aliasing detected\. The following nodes have different prefixes:\nNode: Param\n  args\[0\]: differentiated",
    ):
        nnx.grad(f, argnums=0, **NO_UPDATES)(v, v)
    with pytest.raises(ValueError, match="nnx.grad with graph=False: Duplicate Param"):
        nnx.grad(f, argnums=0, **TREE)(v, v)
    g = nnx.grad(f, argnums=0)(v, v)  # default: d(v*v)/dv at its first place
    np.testing.assert_allclose(g[...], 6.0)


def test_custom_vjp_rejects_shared_arguments_without_graph_updates():
    v = nnx.Param(jnp.array(1.0))

    @nnx.custom_vjp(nondiff_argnums=(1,), **NO_UPDATES)
    def f(a, b):
        return a[...] + b[...]

    f.defvjp(lambda a, b: (f(a, b), ()), lambda b, res, g: (nnx.clone(b),))
    with pytest.raises(ValueError, match="nnx.custom_vjp with graph_updates=False: Duplicate Param"):
        f(v, v)
    assert float(f(v, nnx.Param(jnp.array(2.0)))) == 3.0


# -- prefixes -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [TREE, dict(graph_updates=False)])
def test_prefix_mappings_rejected_without_graph_updates(kw):
    with pytest.raises(
        ValueError,
        match=r"`in_axes` cannot contain `StateAxes` objects when `graph=False` or `graph_updates=False`",
    ):
        nnx.vmap(lambda x: x, in_axes=nnx.StateAxes({...: 0}), **kw)
    with pytest.raises(ValueError, match="`in_shardings` cannot contain `StateSharding` objects"):
        nnx.jit(lambda x: x, in_shardings=nnx.StateSharding({...: None}), **kw)
    with pytest.raises(ValueError, match="`argnums` cannot contain `DiffState` objects"):
        nnx.grad(lambda x: x, argnums=nnx.DiffState(0, nnx.Param), **kw)
    with pytest.raises(ValueError, match="`nondiff_argnums` cannot contain `DiffState` objects"):
        nnx.custom_vjp(lambda m: m, nondiff_argnums=(nnx.DiffState(0, ...),), **kw)


def test_prefix_mappings_work_by_default():
    m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    g = nnx.grad(lambda m: m(jnp.ones(2)).sum(), argnums=nnx.DiffState(0, nnx.Param))(m)
    np.testing.assert_allclose(g["bias"][...], jnp.ones(3))
    out = nnx.vmap(lambda m, x: m(x), in_axes=(nnx.StateAxes({...: None}), 0))(m, jnp.ones((4, 2)))
    assert out.shape == (4, 3)


def test_graph_node_prefix_rejected_with_explicit_graph_true():
    axes = nnx.Dict(a=nnx.Param(1))
    with pytest.raises(
        ValueError,
        match=r"Found graph node of type Dict in `in_axes`\. Graph nodes are not allowed as prefixes when graph=True",
    ):
        nnx.vmap(lambda x: x, in_axes=axes, graph=True, graph_updates=True)
    with pytest.raises(ValueError, match="Graph nodes are not allowed as prefixes when graph=True"):
        nnx.jit(lambda x: x, in_shardings=axes, graph=True)
    x = nnx.Dict(a=nnx.Param(jnp.ones((2, 3))))
    out = nnx.vmap(lambda d: d["a"][...] * 2, in_axes=(nnx.prefix(x, {...: 1}, graph=False),))(x)
    np.testing.assert_array_equal(out, 2 * jnp.ones((3, 2)))  # default: a tree-form prefix is accepted


def test_make_jaxpr_rejects_explicit_graph_updates_true():
    m = nnx.Dict(a=nnx.Param(jnp.array(1)))
    with pytest.raises(
        ValueError, match=r"nnx.make_jaxpr does not support graph_updates=True\. .*drop graph_updates=True"
    ):
        nnx.make_jaxpr(lambda m: m["a"][...], graph=True, graph_updates=True)(m)
    for kw in ({}, NO_UPDATES):
        assert "a" in str(nnx.make_jaxpr(lambda m: m["a"][...] + 1, **kw)(m))


def test_decorator_form_keeps_the_mode():
    v = nnx.Param(jnp.array(1.0))

    @nnx.jit(graph=False)
    def f(a, b):
        return a[...] + b[...]

    with pytest.raises(ValueError, match="nnx.jit with graph=False"):
        f(v, v)

    @nnx.vmap(in_axes=(None, 0), graph=False)
    def g(a, x):
        return a[...] * x

    np.testing.assert_array_equal(g(v, jnp.arange(3.0)), jnp.arange(3.0))


def test_bound_method_still_rejected_in_tree_mode():
    m = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="does not accept bound methods"):
        nnx.jit(m.__call__, graph=False)


# -- graph-form nnx.prefix over objects sharing a Variable ---------------------------------------------
def test_prefix_of_aliased_variable_must_agree():
    v = nnx.Param(jnp.ones((4, 2, 3)))
    foo = Pair(nnx.Param(jnp.ones((4, 2, 3))), v)
    bar = Pair(v, nnx.Param(jnp.ones((2, 4, 3))))
    first = lambda p, x: p[0] == 0  # noqa: E731 - a path filter: leaves of the first object
    fa, fb = nnx.prefix((foo, bar), {first: 0, ...: 1}, graph=True)
    assert fb.prefix_fn((1, "a"), v) == 1  # bar.a is v: its own prefix is 1, foo.b's is 0

    def forward(a, b, x):
        return x @ a.a + x @ b.b

    for kw in ({}, NO_UPDATES):
        with pytest.raises(
            ValueError,
            match=r"Inconsistent aliasing detected\. The following nodes have different prefixes \(in_axes\):\nNode: Param",
        ):
            nnx.vmap(forward, in_axes=(fa, fb, None), **kw)(foo, bar, jnp.ones(2))
    bar.b = nnx.Param(jnp.ones((4, 2, 3)))
    same_a, same_b = nnx.prefix((foo, bar), {...: 0}, graph=True)
    y = nnx.vmap(forward, in_axes=(same_a, same_b, None))(foo, bar, jnp.ones(2))
    np.testing.assert_allclose(y, jnp.full((4, 3), 4.0))


def test_vjp_and_jvp_in_tree_mode():
    v = nnx.Param(jnp.array([1.0, 2.0]))

    def f(a, b):
        return (a[...] * b[...]).sum()

    with pytest.raises(
        ValueError,
        match=r"nnx.vjp with graph=False: Duplicate Param found at paths:\n  - primals\[0\]\n  - primals\[1\]",
    ):
        nnx.vjp(f, v, v, graph=False)
    with pytest.raises(ValueError, match="nnx.jvp with graph=False: Duplicate Param"):
        nnx.jvp(f, (v, v), (v, v), graph=False)
    with pytest.raises(ValueError, match=r"- args\[0\]\n  - out\[1\]"):
        nnx.vjp(lambda a: (a[...].sum(), a), v, has_aux=True, **NO_UPDATES)
    w = nnx.Param(jnp.array([3.0, 4.0]))
    out, pullback = nnx.vjp(f, v, w, graph=False)
    assert float(out) == 11.0
    gv, gw = pullback(jnp.array(1.0))
    np.testing.assert_allclose(gv[...], [3.0, 4.0])
    np.testing.assert_allclose(gw[...], [1.0, 2.0])
    out, pullback = nnx.vjp(f, v, v)  # default: one Variable, both places
    assert float(out) == 5.0


def test_split_and_fork_rngs_reject_shared_streams_in_tree_mode():
    rngs = nnx.Rngs(0)
    node = nnx.Dict(a=rngs, b=rngs)
    with pytest.raises(ValueError, match=r"split_rngs with graph=False: Duplicate RngCount found at paths"):
        nnx.split_rngs(node, splits=2, graph=False)
    with pytest.raises(ValueError, match=r"fork_rngs with graph=False: Duplicate RngCount found at paths"):
        nnx.fork_rngs(node, graph=False)
    backups = nnx.split_rngs(node, splits=2)  # default: the shared stream is split once
    assert node.a.default.key.shape == (2,)
    nnx.restore_rngs(backups)
    assert node.b.default.key.shape == ()
    copy = nnx.split_rngs(nnx.Rngs(1), splits=3, graph=False)  # unshared: a split copy
    assert copy.default.key.shape == (3,)
