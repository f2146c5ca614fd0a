"""Flax's module namespaces: nnx.graph, graphlib, statelib, filterlib, traversals,
extract, ids (thin modules over nnxfn's own implementations)."""

import copy

import pytest

import jax.numpy as jnp

import nnxfn as nnx
from nnxfn import graph, statelib


def test_namespaces_reexport_the_same_objects():
    assert nnx.graph.GraphDef is nnx.GraphDef is nnx.graphlib.GraphDef
    assert graph.split is nnx.split and graph.merge is nnx.merge
    assert statelib.State is nnx.State and statelib.to_pure_dict is nnx.to_pure_dict
    assert nnx.graphlib.Variable is nnx.Variable  # any nnxfn name, as Flax's graphlib has it
    assert nnx.extract.NodeStates is nnx.NodeStates
    assert nnx.variables is nnx.state


def test_filterlib_to_predicate_and_path_contains_exact():
    pred = nnx.filterlib.to_predicate((nnx.Param, "tag"))
    assert pred(("a",), nnx.Param(1)) and not pred(("a",), nnx.BatchStat(1))
    assert nnx.PathContains("head")(("head", "kernel"), None)
    assert not nnx.PathContains("back")(("backbone1", "kernel"), None)
    assert nnx.PathContains("back", exact=False)(("backbone1", "kernel"), None)


def test_state_with_path_contains_not_exact():
    class Model(nnx.Module):
        def __init__(self):
            self.backbone1 = nnx.Param(jnp.ones(1))
            self.backbone2 = nnx.Param(jnp.ones(1))
            self.head = nnx.Param(jnp.ones(1))

    s = nnx.state(Model(), nnx.PathContains("backbone", exact=False))
    assert set(s) == {"backbone1", "backbone2"}


def test_traversals_flatten_unflatten_mapping():
    t = nnx.traversals
    xs = {"foo": 1, "bar": {"a": 2, "b": {}}}
    assert t.flatten_mapping(xs) == {("foo",): 1, ("bar", "a"): 2}
    assert t.flatten_mapping(xs, sep="/") == {"foo": 1, "bar/a": 2}
    kept = t.flatten_mapping(xs, keep_empty_nodes=True)
    assert kept[("bar", "b")] is t.empty_node
    assert t.unflatten_mapping(kept) == xs
    assert t.unflatten_mapping({"foo": 1, "bar/a": 2}, sep="/") == {"foo": 1, "bar": {"a": 2}}
    leafy = t.flatten_mapping(xs, is_leaf=lambda k, x: len(k) == 1 and len(x) == 2)
    assert leafy == {("foo",): 1, ("bar",): {"a": 2, "b": {}}}


def test_ids_are_unique_under_copy():
    a, b = nnx.ids.uuid(), nnx.ids.uuid()
    assert a == a and a != b and hash(a) != hash(b)
    assert copy.copy(a) != a and copy.deepcopy(a) != a


def test_variable_state_alias_warns():
    with pytest.warns(DeprecationWarning, match="use 'Variable'"):
        assert nnx.VariableState is nnx.Variable
    assert "VariableState" not in dir(nnx)
    with pytest.raises(AttributeError, match="VariableStat"):
        nnx.VariableStat


def test_promote_dtype_matches_result_type():
    from nnxfn.nn import dtypes

    a, b, c = dtypes.promote_dtype((jnp.ones(2, jnp.int8), None, jnp.ones(2, jnp.float16)))
    assert a.dtype == jnp.float16 and b is None and c.dtype == jnp.float16
    (d,) = dtypes.promote_dtype((jnp.ones(2, jnp.int32),), inexact=False)
    assert d.dtype == jnp.int32
    with pytest.raises(ValueError, match="inexact"):
        dtypes.canonicalize_dtype(jnp.ones(2), dtype=jnp.int32)
    import nnxfn

    assert nnxfn.nn.dtypes.promote_dtype is dtypes.promote_dtype
