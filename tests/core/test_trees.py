"""to_tree/from_tree, NodeStates and prefix (core/trees.py)."""

import dataclasses
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import pytest

import nnxfn as nnx


class Foo(nnx.Module):
    def __init__(self, a, b):
        self.a = nnx.Param(a)
        self.b = nnx.BatchStat(b)


def test_to_tree_from_tree_keeps_sharing():
    m = Foo(jnp.array(1.0), jnp.array(2.0))
    pure = nnx.to_tree((m, 1, {"x": m}))
    assert pure[1] == 1 and isinstance(pure[0], nnx.NodeStates)
    assert isinstance(pure[2]["x"].graphdef.nodes[0], nnx.graphlib.NodeRef)
    assert jax.tree.leaves(pure[2]["x"]) == []
    back = nnx.from_tree(pure)
    assert back[0] is back[2]["x"] and back[0] is not m
    assert float(back[0].b[...]) == 2.0


def test_to_tree_prefix_aliasing_is_checked():
    m = Foo(jnp.array(1.0), jnp.array(2.0))
    nnx.to_tree((m, 1, {"x": m}), prefix=(0, None, 0))
    with pytest.raises(ValueError, match="Inconsistent aliasing detected"):
        nnx.to_tree((m, 1, {"x": m}), prefix=(0, None, 1))


def test_node_states_as_vmap_prefix_through_an_update_context():
    @dataclasses.dataclass(frozen=True)
    class Axes:
        params: Any
        stats: Any

    def split_fn(ctx, path, prefix, x):
        if isinstance(prefix, Axes):
            return nnx.NodeStates.from_split(*ctx.split(x, nnx.Param, nnx.BatchStat))
        return nnx.NodeStates.from_split(*ctx.split(x))

    with nnx.update_context("v"):
        m = Foo(jnp.array(1.0), jnp.arange(4.0))
        axes = Axes(None, 0)
        jax_axes = nnx.NodeStates.from_prefixes((axes.params, axes.stats))
        pure = nnx.to_tree((m,), ctxtag="v", prefix=(axes,), split_fn=split_fn)

        @partial(jax.vmap, in_axes=(jax_axes,), out_axes=((jax_axes,), 0))
        def f(pure_m):
            (m_in,) = nnx.from_tree((pure_m,), ctxtag="v", is_inner=True)
            y = m_in.a[...] + m_in.b[...]
            m_in.b[...] = y
            out = nnx.extract.clear_non_graph_nodes((m_in,))
            return nnx.to_tree(out, prefix=(axes,), ctxtag="v", split_fn=split_fn), y

        pure_out, y = f(pure[0])
        (m_out,) = nnx.from_tree(pure_out, ctxtag="v", is_inner=False)
    assert m_out is m
    assert jnp.allclose(y, jnp.arange(4.0) + 1.0)
    assert jnp.allclose(m.b[...], jnp.arange(4.0) + 1.0)


def test_prefix_with_filter_mapping_and_callable():
    class Model(nnx.Module):
        def __init__(self):
            self.linear = Foo(jnp.ones(2), jnp.zeros(2))
            self.w = nnx.Param(jnp.ones((4, 2)))

    model = Model()
    result = nnx.prefix(model, {nnx.Param: 0, nnx.BatchStat: None}, graph=False)
    # a tree shaped like the model (Variables hold the prefix values), as jax.vmap wants
    assert result.w[...] == 0 and result.linear.a[...] == 0 and result.linear.b[...] is None
    result = nnx.prefix(model, lambda path, leaf: "/".join(map(str, path)), graph=False)
    assert result.linear.b[...] == "linear/b" and result.w[...] == "w"
    with pytest.raises(ValueError, match="No filter matched"):
        nnx.prefix(model, {nnx.BatchStat: 0})


def test_prefix_graph_form_is_a_tree_state_per_node():
    model = Foo(jnp.ones(2), jnp.zeros(2))
    result = nnx.prefix(model, {nnx.Param: "params", nnx.BatchStat: "stats"})
    assert isinstance(result, nnx.extract.TreeState)
    assert result.graphdef == nnx.graphdef(model)
    assert result.state["a"] == "params" and result.state["b"] == "stats"
    first, second = nnx.prefix((model, model), lambda path, leaf: path)
    assert first.state["a"] == (0, "a")  # paths start at the outer tree
    assert len(second.state) == 0 and isinstance(second.graphdef.nodes[0], nnx.graphlib.NodeRef)
    assert nnx.prefix(nnx.Param(jnp.ones(1)), {nnx.Param: 0}).state == 0


def test_prefix_as_jax_vmap_in_axes():
    model = Foo(jnp.ones((4, 2)), jnp.zeros(()))
    axes = nnx.prefix(model, {nnx.Param: 0, ...: None}, graph=False)
    y = jax.vmap(lambda m, x: x @ m.a[...] + m.b[...], in_axes=(axes, None))(model, jnp.ones(2))
    assert y.shape == (4,) and jnp.allclose(y, 2.0)
