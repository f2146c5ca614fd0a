"""Tree mode (`graph=False`, `set_graph_mode(False)`) rejects what a pytree cannot hold,
as in Flax; the same inputs keep working in the default (graph) mode."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxfn as nnx


class NotAPytree(nnx.Pytree, pytree=False):
    def __init__(self):
        self.x = 1


def _shared_pair():
    v = nnx.Param(jnp.array(1.0))
    return v, [v, v]


def _cycle():
    a = nnx.List([1])
    b = nnx.List([2, a])
    a.append(b)
    return a


# -- shared Variables ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "call",
    [
        lambda g: nnx.split(g, graph=False),
        lambda g: nnx.state(g, graph=False),
        lambda g: nnx.graphdef(g, graph=False),
        lambda g: nnx.clone(g, graph=False),
        lambda g: list(nnx.iter_graph(g, graph=False)),
        lambda g: nnx.recursive_map(lambda p, x: x, g, graph=False),
        lambda g: nnx.graphlib.flatten(g, graph=False),
    ],
)
def test_shared_variable_raises_naming_both_paths_and_the_fix(call):
    _, g = _shared_pair()
    with pytest.raises(
        ValueError, match=r"Duplicate Param found at paths:\n  - node\[0\]\n  - node\[1\]"
    ) as e:
        call(g)
    assert "graph=True" in str(e.value) and "nnx.clone" in str(e.value)


def test_shared_variable_in_default_mode_is_one_leaf():
    v, g = _shared_pair()
    graphdef, state = nnx.split(g)
    assert len(state.flat_state()) == 1
    a, b = nnx.merge(graphdef, state)
    assert a is b and float(a[...]) == 1.0
    c1, c2 = nnx.clone(g)
    assert c1 is c2 and c1 is not v
    assert len(list(nnx.iter_graph(g))) == 2  # the Variable once, then the list


def test_set_graph_mode_false_is_tree_mode():
    _, g = _shared_pair()
    with nnx.set_graph_mode(False):
        with pytest.raises(ValueError, match="found at paths"):
            nnx.split(g)
        with pytest.raises(ValueError, match="found at paths"):
            nnx.state(g)
        with nnx.set_graph_mode(True):  # graph mode again: the sharing is kept
            _, state = nnx.split(g)
            assert len(state.flat_state()) == 1


def test_shared_variable_through_a_shared_module_raises():
    inner = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    outer = nnx.Dict(a=inner, b=inner)
    with pytest.raises(
        ValueError, match=r"Duplicate Param found at paths:\n  - node\.a\.bias\n  - node\.b\.bias"
    ):
        nnx.split(outer, graph=False)
    _, state = nnx.split(outer)  # graph mode: one set of leaves
    assert len(state.flat_state()) == 2


def test_shared_array_refs_raise():
    ref = jax.new_ref(jnp.array(1.0))
    with pytest.raises(ValueError, match="Duplicate Ref found at paths"):
        nnx.split([ref, ref], graph=False)


def test_unshared_graph_splits_to_the_same_state_in_tree_mode():
    m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    g1, s1 = nnx.split(m, graph=False)
    g2, s2 = nnx.split(m)
    assert g1 != g2 and isinstance(g1.nodes[0], nnx.graphlib.TreeNodeDef)  # Flax's tree-mode records
    assert [p for p, _ in s1.flat_state()] == [p for p, _ in s2.flat_state()]
    np.testing.assert_array_equal(s1["kernel"][...], m.kernel[...])
    assert nnx.graphdef(m, graph=False) == g1
    m2 = nnx.clone(m, graph=False)
    np.testing.assert_array_equal(m2.kernel[...], m.kernel[...])


# -- cycles ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "call",
    [
        lambda g: list(nnx.iter_graph(g, graph=False)),
        lambda g: nnx.recursive_map(lambda p, x: x, g, graph=False),
        lambda g: nnx.split(g, graph=False),
    ],
)
def test_cycle_raises_in_tree_mode(call):
    a = _cycle()
    with pytest.raises(
        ValueError, match=r"Cycle detected for List found at paths:\n  - node\n  - node\[1\]\[1\]"
    ):
        call(a)


def test_cycle_is_supported_in_default_mode():
    a = _cycle()
    graphdef, state = nnx.split(a)
    a2 = nnx.merge(graphdef, state)
    assert a2[1][1] is a2
    assert [p for p, _ in nnx.iter_graph(a)][-1] == ()


def test_shared_module_without_variables_is_not_a_cycle():
    leaf = nnx.List([1, 2])
    paths = [p for p, _ in nnx.iter_graph(nnx.List([leaf, leaf]), graph=False)]
    assert () in paths


# -- pytree=False objects -----------------------------------------------------------------------------
def test_pytree_false_object_raises_with_its_path():
    with pytest.raises(ValueError, match=r"pytree=False\. Found at path: node\[0\]"):
        nnx.graphlib.flatten([NotAPytree()], graph=False)
    with pytest.raises(
        ValueError, match=r"'iter_graph' with graph=False on a 'NotAPytree'.*Found at path: node\[0\]"
    ):
        list(nnx.iter_graph(nnx.List([NotAPytree()]), graph=False))
    with pytest.raises(ValueError, match="pytree=False"):
        nnx.recursive_map(lambda p, x: x, nnx.List([NotAPytree()]), graph=False)


def test_pytree_false_root_in_iter_children():
    node = NotAPytree()
    with pytest.raises(
        ValueError,
        match=r"'iter_children' with graph=False on a 'NotAPytree' instance that has pytree=False\. Pytree",
    ):
        list(nnx.iter_children(node, graph=False))
    assert list(nnx.iter_children(node)) == []  # default mode: a graph node without children


def test_pytree_false_object_in_default_mode():
    node = nnx.List([NotAPytree()])
    graphdef, state = nnx.split(node)
    assert nnx.merge(graphdef, state)[0].x == 1
    assert len(list(nnx.iter_graph(node))) == 3


def test_map_and_unpack_in_tree_mode():
    v, _ = _shared_pair()
    node = nnx.Dict(a=v, b=v)
    with pytest.raises(
        ValueError, match=r"map with graph=False: Duplicate Param found at paths:\n  - node\.a\n  - node\.b"
    ):
        nnx.map(lambda p, x: x, node, graph=False)
    with pytest.raises(ValueError, match="unpack with graph=False: Duplicate Param"):
        nnx.unpack(node, graph=False)
    doubled = nnx.map(lambda p, x: x[...] * 2, node)  # default: one Variable, mapped once
    assert doubled.a is doubled.b and float(doubled.a[...]) == 2.0
    m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    gs = nnx.unpack(m, graph=False)
    np.testing.assert_array_equal(nnx.merge(gs).kernel[...], m.kernel[...])
