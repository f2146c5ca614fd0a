"""Ref Variables across an update_context: NoUpdate / ArrayRefOutput (core/refoutputs.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxfn as nnx
from nnxfn import graphlib


def _ref_linear(seed):
    return nnx.with_vars(nnx.Linear(1, 1, rngs=nnx.Rngs(seed)), ref=True)


def _round_trip(use_tree):
    m1 = _ref_linear(0)
    with nnx.update_context("t"):
        if use_tree:
            (m2,) = nnx.from_tree(nnx.to_tree((m1,), ctxtag="t"), ctxtag="t", is_inner=True)
        else:
            with nnx.split_context("t") as ctx:
                graphdef, state = ctx.split(m1)
            with nnx.merge_context("t", True) as ctx:
                m2 = ctx.merge(graphdef, state)
        assert m2 is not m1 and m2.kernel.get_raw_value() is m1.kernel.get_raw_value()
        m2.kernel[...] = jnp.array([[5.0]])  # a write into the shared Ref
        made = _ref_linear(1)
        made_kernel = np.asarray(made.kernel[...])
        if use_tree:
            out = nnx.to_tree(((m2,), made, m2), ctxtag="t")
            states = [out[0][0].states[0], out[1].states[0]]
            assert len(out[2].states[0]) == 0  # m2 again: a reference
        else:
            with nnx.split_context("t") as ctx:
                graphdef_out, out = ctx.split((m2, made, m2))
            states = [out[0], out[1]]
        assert isinstance(states[0]["kernel"].get_value(), graphlib.NoUpdate)
        assert isinstance(states[1]["kernel"].get_value(), graphlib.ArrayRefOutput)
        np.testing.assert_allclose(states[1]["kernel"].get_value().value, made_kernel)
        assert len(jax.tree.leaves(out)) == 2  # NoUpdate is an empty pytree
        if use_tree:
            (m3,), m_out, _ = nnx.from_tree(out, ctxtag="t", is_inner=False)
        else:
            with nnx.merge_context("t", False) as ctx:
                m3, m_out, _ = ctx.merge(graphdef_out, out)
    return m1, m3, made, m_out, made_kernel


@pytest.mark.parametrize("use_tree", [False, True])
def test_update_context_returns_only_new_refs(use_tree):
    m1, m3, made, m_out, made_kernel = _round_trip(use_tree)
    assert m3 is m1
    assert float(m1.kernel[...][0, 0]) == 5.0  # the write went through the Ref
    assert m_out is not made
    assert isinstance(m_out.kernel.get_raw_value(), jax.Ref)
    assert m_out.kernel.get_raw_value() is not made.kernel.get_raw_value()  # a new Ref
    np.testing.assert_allclose(m_out.kernel[...], made_kernel)


def test_flatten_indexes_refs_of_variables():
    class Foo(nnx.Module):
        def __init__(self):
            self.a = nnx.Param(1, ref=True)
            self.b = self.a
            self.c = nnx.Param(2, ref=True)

    ref_map = graphlib.RefMap()
    graphdef, state = graphlib.flatten(Foo(), ref_index=ref_map)
    assert len(state) == 2
    assert len(ref_map) == 5  # Foo, 2 Params, 2 Refs
    m = nnx.merge(graphdef, state)
    assert m.a is m.b and int(m.c[...]) == 2


def test_no_update_outside_its_context_is_an_error():
    m = _ref_linear(0)
    graphdef, flat = graphlib.flatten(m)
    leaves = dict(flat)
    kernel = leaves[("kernel",)]
    leaves[("kernel",)] = type(kernel).from_parts(graphlib.NO_UPDATE, kernel.metadata_items())
    with pytest.raises(ValueError, match=r"kernel holds NoUpdate.*merge_context"):
        graphlib.unflatten(graphdef, graphlib.FlatState(leaves.items()))
