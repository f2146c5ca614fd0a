"""Tree mode's GraphDef (`graph=False`): Flax's `TreeNodeDef` + `VariableDef`
records, leaves in sorted path order, merge restoring the node."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxfn as nnx
from nnxfn.core.graphdef import GraphDef


def _eq(a, b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


class Model(nnx.Module):
    def __init__(self):
        self.z = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
        self.a = nnx.BatchNorm(3, rngs=nnx.Rngs(1))

    def __call__(self, x):
        return self.a(self.z(x))


def test_split_records_are_flax_s_tree_mode_records():
    m = Model()
    graphdef, state = nnx.split(m, graph=False)
    tree, *variables = graphdef.nodes
    assert isinstance(tree, nnx.graphlib.TreeNodeDef) and tree.type is Model
    paths = [p for p, _ in tree.path_index]
    assert paths == sorted(paths) and paths[0] == ("a", "bias") and paths[-1] == ("z", "kernel")
    assert tree.treedef == jax.tree.structure(m, is_leaf=lambda x: isinstance(x, nnx.Variable))
    assert all(isinstance(v, nnx.graphlib.VariableDef) for v in variables)
    assert [v.index for v in variables] == list(range(len(paths)))  # every leaf is a Variable here
    assert variables[paths.index(("a", "mean"))].type is nnx.BatchStat
    assert graphdef.num_leaves == len(paths)
    assert state["z"]["kernel"] is m.z.kernel  # the model's own Variables, as in graph mode


def test_merge_rebuilds_the_module_with_the_state_s_variables():
    m = Model()
    graphdef, state = nnx.split(m, graph=False)
    m2 = nnx.merge(graphdef, state)
    assert type(m2) is Model and m2.z.kernel is m.z.kernel
    assert m2.a.momentum == m.a.momentum and m2.z.in_features == 2
    x = jnp.ones((4, 2))
    _eq(m2(x), m(x))
    copied = nnx.merge(graphdef, state, copy=True)
    assert copied.z.kernel is not m.z.kernel
    _eq(copied.z.kernel[...], m.z.kernel[...])


def test_split_with_filters_and_merge_of_the_parts():
    m = Model()
    graphdef, params, stats = nnx.split(m, nnx.Param, nnx.BatchStat, graph=False)
    assert sorted(p for p, _ in params.flat_state()) == [
        ("a", "bias"),
        ("a", "scale"),
        ("z", "bias"),
        ("z", "kernel"),
    ]
    assert sorted(p for p, _ in stats.flat_state()) == [("a", "mean"), ("a", "var")]
    m2 = nnx.merge(graphdef, stats, params)  # any order: by path
    assert m2.a.mean is m.a.mean and m2.z.bias is m.z.bias
    with pytest.raises(ValueError, match=r"missing paths: \[\('a', 'mean'\), \('a', 'var'\)\]"):
        nnx.merge(graphdef, params)


def test_variable_root_and_raw_values_for_variable_records():
    v = nnx.Param(jnp.array(1.0))
    graphdef, state = nnx.split(v, graph=False)
    assert isinstance(graphdef.nodes[0], nnx.graphlib.TreeNodeDef) and state is v
    assert graphdef.nodes[0].path_index == (((), 0),)
    assert nnx.merge(graphdef, state) is v
    boxed = nnx.merge(graphdef, jnp.array(5.0))  # a raw value where the GraphDef has a Param
    assert type(boxed) is nnx.Param and float(boxed[...]) == 5.0


def test_plain_pytrees_int_leaves_and_flat_states():
    g = {"b": [nnx.Param(jnp.array(1)), jnp.array(2)], "a": (nnx.Param(jnp.array(3)), 4)}
    graphdef, flat = nnx.graphlib.flatten(g, graph=False)
    assert list(flat.paths) == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    assert flat.leaves[1] == 4  # a Python int inside a tuple is a leaf in tree mode
    out = nnx.graphlib.unflatten(graphdef, flat)
    assert out["a"][1] == 4 and type(out["a"]) is tuple and out["b"][0] is g["b"][0]
    graphdef2, leaves = nnx.graphlib.flatten(g, with_paths=False, graph=False)
    assert graphdef2 == graphdef and hash(graphdef2) == hash(graphdef) and len(leaves) == 4
    assert nnx.graphlib.unflatten(graphdef, leaves)["b"][1] is g["b"][1]


def test_set_graph_mode_false_gives_tree_mode_records_and_graph_true_does_not():
    m = Model()
    with nnx.set_graph_mode(False):
        assert isinstance(nnx.graphdef(m).nodes[0], nnx.graphlib.TreeNodeDef)
        assert not isinstance(nnx.graphdef(m, graph=True).nodes[0], nnx.graphlib.TreeNodeDef)
        clone = nnx.clone(m)
    assert clone.z.kernel is not m.z.kernel
    _eq(clone.z.kernel[...], m.z.kernel[...])


def test_tree_graphdef_is_a_static_jit_argument():
    m = Model()
    m.eval()  # BatchNorm reads its running statistics: nothing is written inside jax.jit
    graphdef, state = nnx.split(m, graph=False)
    assert isinstance(graphdef, GraphDef) and jax.tree.leaves(graphdef) == []

    @jax.jit
    def forward(graphdef, state, x):
        return nnx.merge(graphdef, state)(x)

    x = jnp.ones((4, 2))
    _eq(forward(graphdef, state, x), m(x))
    with pytest.raises(TypeError, match="tree mode"):
        graphdef.ops  # noqa: B018


def test_tree_mode_rejections_still_name_both_paths():
    shared = nnx.Param(jnp.zeros(2))
    m = nnx.Module()
    m.a, m.b = shared, shared
    with pytest.raises(ValueError, match=r"Duplicate Param found at paths:\n  - node\.a\n  - node\.b"):
        nnx.split(m, graph=False)
    m2 = nnx.Module()
    m2.me = m2
    with pytest.raises(ValueError, match="Cycle detected"):
        nnx.graphdef(m2, graph=False)
