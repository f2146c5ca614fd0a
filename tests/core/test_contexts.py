"""Flax-style flatten/unflatten with reference maps, and the split/merge/update
contexts (core/contexts.py)."""

from functools import partial

import jax
import jax.numpy as jnp
import pytest

import nnxfn as nnx
from nnxfn import graphlib


class Foo(nnx.Module):
    def __init__(self):
        self.a = nnx.Param(jnp.array(1.0))
        self.b = nnx.Param(jnp.array(2.0))


def test_flatten_records_variables_in_ref_index():
    a = {"x": 1, "p": nnx.Param(jnp.array(2))}
    g = [a, 3, a, nnx.Param(jnp.array(4))]
    refmap = graphlib.RefMap()
    graphdef, flat = graphlib.flatten(g, ref_index=refmap)
    assert isinstance(flat, graphlib.FlatState)
    assert [int(v[...]) for _, v in flat] == [2, 4]
    assert len(refmap) == 2 and a["p"] in refmap and g[3] in refmap
    _, leaves = graphlib.flatten(g, with_paths=False)
    assert [int(v[...]) for v in leaves] == [2, 4]
    g2 = graphlib.unflatten(graphdef, flat)
    assert g2[0] is not g2[2] and g2[0]["p"] is g2[2]["p"]


def test_flatten_indexes_a_shared_bare_ref_once():
    ref = jax.new_ref(jnp.array(5))
    g = {"a": ref, "b": ref}
    refmap = graphlib.RefMap()
    graphdef, flat = graphlib.flatten(g, ref_index=refmap)
    assert [p for p, _ in flat] == [("a",)] and len(refmap) == 1 and ref in refmap
    g2 = graphlib.unflatten(graphdef, flat)
    assert g2["a"] is g2["b"] is ref


def test_unflatten_checks_the_number_of_leaves():
    graphdef, _ = nnx.split(Foo())
    with pytest.raises(ValueError, match="Incorrect number of leaves"):
        graphlib.unflatten(graphdef, nnx.State({}))


def test_split_context_second_split_is_a_reference():
    m = Foo()
    with graphlib.split_context() as ctx:
        g1, s1 = ctx.split(m)
        g2, s2 = ctx.split(m)
    assert not hasattr(ctx, "ref_index")
    assert isinstance(g1.nodes[0], graphlib.NodeDef)
    assert isinstance(g2.nodes[0], graphlib.NodeRef)
    assert len(nnx.to_flat_state(s1)) == 2 and len(nnx.to_flat_state(s2)) == 0
    with graphlib.merge_context() as ctx:
        m1 = ctx.merge(g1, s1)
        m2 = ctx.merge(g2, s2)
    assert m1 is m2 and m1 is not m
    assert float(m1.b[...]) == 2.0


def test_split_context_sub_node_already_seen():
    inner = Foo()
    outer = nnx.List([inner])
    with graphlib.split_context() as ctx:
        g1, s1 = ctx.split(outer)
        g2, s2 = ctx.split(inner)
    with graphlib.merge_context() as ctx:
        o = ctx.merge(g1, s1)
        i = ctx.merge(g2, s2)
    assert o[0] is i


def _roundtrip_through_jit(m, mutate):
    """The update protocol: outer split, inner merge/mutate/split under jit,
    outer merge onto the original objects."""
    ref_out = graphlib.RefMap()
    graphdef, flat = graphlib.flatten(m, ref_index=ref_out)
    state = flat.to_nested_state()

    @partial(jax.jit, static_argnums=(0,))
    def inner(graphdef, state):
        idx_in = graphlib.IndexMap()
        m_in = graphlib.unflatten(graphdef, state, index_ref=idx_in)
        mutate(m_in)
        graphdef, flat = graphlib.flatten(
            m_in, ref_index=graphlib.RefMap(), ref_outer_index=graphlib.RefMap.from_indexmap(idx_in)
        )
        return flat.to_nested_state(), graphdef

    state, graphdef_out = inner(graphdef, state)
    return graphlib.unflatten(
        graphdef_out, state, outer_index_outer_ref=graphlib.IndexMap.from_refmap(ref_out)
    )


def test_outer_index_commits_swapped_variables_onto_the_original():
    m = Foo()
    a, b = m.a, m.b

    def swap_and_scale(m):
        m.a, m.b = m.b, m.a
        m.a[...] *= 10

    m2 = _roundtrip_through_jit(m, swap_and_scale)
    assert m2 is m and m.a is b and m.b is a
    assert float(m.a[...]) == 20.0 and float(m.b[...]) == 1.0


def test_outer_index_commits_a_new_cycle():
    m = nnx.Module()
    m.ref = None

    def add_cycle(m):
        m.ref = m

    m2 = _roundtrip_through_jit(m, add_cycle)
    assert m2 is m and m.ref is m


def test_update_context_split_merge_under_jit():
    m = Foo()
    with nnx.update_context("t"):
        with nnx.split_context("t") as ctx:
            g1, s1 = ctx.split(m)
            g2, s2 = ctx.split(m)

        @jax.jit
        def f(g1, s1, g2, s2):
            with nnx.merge_context("t", True) as ctx:
                m1 = ctx.merge(g1, s1)
                m2 = ctx.merge(g2, s2)
            assert m1 is m2
            m1.a, m1.b = m1.b, m1.a
            with nnx.split_context("t") as ctx:
                return (*ctx.split(m1), *ctx.split(m2))

        g1, s1, g2, s2 = f(g1, s1, g2, s2)
        with nnx.merge_context("t", False) as ctx:
            out1 = ctx.merge(g1, s1)
            out2 = ctx.merge(g2, s2)
    assert out1 is m and out2 is m
    assert float(m.a[...]) == 2.0 and float(m.b[...]) == 1.0


def test_current_update_context_and_decorator():
    with pytest.raises(ValueError, match="No update context"):
        nnx.current_update_context("missing")

    @nnx.update_context("deco")
    def inside():
        return nnx.current_update_context("deco")

    assert isinstance(inside(), nnx.UpdateContext)
    with pytest.raises(ValueError, match="inner"):
        with nnx.update_context("x"):
            with nnx.merge_context("x"):
                pass
