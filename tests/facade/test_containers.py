"""nnx.List, nnx.Dict, nnx.Sequential (and plain containers as attributes)."""

import copy
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxfn as nnx
from nnxfn.facade import context


class Linear(nnx.Module):
    def __init__(self, din, dout, seed=0):
        self.kernel = nnx.Param(jax.random.normal(jax.random.key(seed), (din, dout)))
        self.bias = nnx.Param(jnp.zeros(dout))

    def __call__(self, x):
        return x @ self.kernel + self.bias


def _eq(a, b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# -- List ---------------------------------------------------------------------
def test_list_sequence_protocol():
    a, b, c = Linear(1, 1, 0), Linear(1, 1, 1), Linear(1, 1, 2)
    lst = nnx.List([a, b])
    assert len(lst) == 2 and lst[0] is a and lst[-1] is b
    lst.append(c)
    assert list(lst) == [a, b, c]
    assert lst[1:] == [b, c]
    lst[0] = c
    assert lst[0] is c
    del lst[0]
    assert list(lst) == [b, c]
    lst.insert(0, a)
    assert lst.index(b) == 1 and b in lst
    lst.extend([Linear(1, 1)])
    assert len(lst) == 4
    assert lst.pop() is not None and len(lst) == 3


def test_list_is_a_graph_node_with_int_paths():
    m = nnx.Module()
    m.layers = nnx.List([Linear(2, 2, i) for i in range(3)])
    g, state = nnx.split(m)
    assert set(state["layers"]) == {0, 1, 2}
    assert ("layers", 2, "kernel") in state.flat_dict()
    new = nnx.merge(g, state)
    assert type(new.layers) is nnx.List and len(new.layers) == 3
    _eq(new.layers[2].kernel[...], m.layers[2].kernel[...])


def test_list_structural_changes_bump_epoch():
    lst = nnx.List([jnp.ones(1)])
    e0 = context.structure_epoch()
    lst.append(jnp.ones(2))
    assert context.structure_epoch() > e0


def test_list_can_be_shared_and_in_cycles():
    m = nnx.Module()
    m.a = nnx.List([Linear(1, 1)])
    m.b = m.a
    m.a.append(m)
    new = nnx.clone(m)
    assert new.a is new.b and new.a[1] is new
    assert nnx.graphdef(new) == nnx.graphdef(m)


def test_list_pytree_pickle_deepcopy():
    lst = nnx.List([nnx.Param(jnp.ones(2)), jnp.zeros(1)])
    lst.append(lst[0])
    out = jax.tree.map(lambda x: x + 1, lst)
    assert type(out) is nnx.List and out[0] is out[2]
    _eq(out[0][...], jnp.full(2, 2.0))
    _eq(out[1], jnp.ones(1))
    for c in (pickle.loads(pickle.dumps(lst)), copy.deepcopy(lst)):
        assert type(c) is nnx.List and len(c) == 3 and c[0] is c[2]
        _eq(c[0][...], jnp.ones(2))


def test_list_pop_variable_from_it():
    lst = nnx.List([nnx.Param(jnp.ones(1)), nnx.BatchStat(jnp.zeros(1))])
    stats = nnx.pop(lst, nnx.BatchStat)
    assert len(lst) == 1 and type(lst[0]) is nnx.Param
    assert list(stats) == [1]


def test_list_pop_several_items_does_not_shift_indices():
    lst = nnx.List([nnx.BatchStat(jnp.zeros(1)), nnx.Param(jnp.ones(1)), nnx.BatchStat(jnp.full(1, 2.0))])
    stats = nnx.pop(lst, nnx.BatchStat)
    assert len(lst) == 1 and type(lst[0]) is nnx.Param
    assert sorted(stats) == [0, 2]
    _eq(stats[2][...], jnp.full(1, 2.0))


def test_pop_error_leaves_object_unchanged():
    m = nnx.Module()
    m.a = nnx.Param(jnp.ones(1))
    m.z = (nnx.Param(jnp.ones(1)),)  # a tuple cannot lose an entry (lists and dicts can)
    with pytest.raises(ValueError, match=r"node\.z\[0\] lives inside a container"):
        nnx.pop(m, nnx.Param)
    assert hasattr(m, "a")


def test_list_repr():
    text = repr(nnx.List([Linear(1, 2)]))
    assert text.startswith("List(") and "[0]: Linear(" in text
    assert "shape=(1, 2)" in text


# -- Dict -----------------------------------------------------------------------
def test_dict_mapping_protocol_and_attribute_access():
    enc, dec = Linear(2, 3), Linear(3, 2)
    d = nnx.Dict(enc=enc, dec=dec)
    assert d["enc"] is enc and d.dec is dec
    assert set(d) == {"enc", "dec"} and len(d) == 2
    d["w"] = nnx.Param(jnp.ones(1))
    assert d.w is d["w"]
    del d["enc"]
    assert "enc" not in d and len(d) == 2
    with pytest.raises(KeyError):
        d["enc"]
    assert dict(d.items())["dec"] is dec
    d2 = nnx.Dict({"a": jnp.ones(1)})
    assert list(d2.keys()) == ["a"]


def test_dict_split_merge():
    m = nnx.Module()
    m.heads = nnx.Dict(a=Linear(1, 1, 0), b=Linear(1, 1, 1))
    m.heads.c = m.heads["a"]  # shared
    g, params = nnx.split(m, nnx.Param)
    assert set(params["heads"]) == {"a", "b"}
    new = nnx.merge(g, params)
    assert type(new.heads) is nnx.Dict
    assert new.heads["c"] is new.heads["a"]
    assert set(new.heads) == {"a", "b", "c"}


def test_dict_is_module_with_modes():
    class Drop(nnx.Module):
        def __init__(self):
            self.deterministic = False

    d = nnx.Dict(drop=Drop())
    d.eval()
    assert d["drop"].deterministic is True


# -- Sequential ------------------------------------------------------------------------
def test_sequential_applies_in_order():
    l1, l2 = Linear(2, 3, 0), Linear(3, 1, 1)
    seq = nnx.Sequential(l1, jax.nn.relu, l2)
    x = jnp.ones((4, 2))
    _eq(seq(x), l2(jax.nn.relu(l1(x))))
    g, state = nnx.split(seq)
    assert set(state["layers"]) == {0, 2}  # the function is static
    new = nnx.merge(g, state)
    _eq(new(x), seq(x))
    assert new.layers[1] is jax.nn.relu


def test_sequential_passes_args_to_first_layer():
    seq = nnx.Sequential(lambda a, b: a + b, lambda y: y * 2)
    assert seq(1, 2) == 6


def test_empty_sequential_is_the_identity():  # Flax's behaviour (was an error)
    empty = nnx.Sequential()
    assert empty(12) == 12 and empty(1, 2) == (1, 2) and empty() is None
    assert empty(k=2) == {"k": 2}


def test_sequential_splats_tuple_and_dict_outputs_and_passes_rngs():
    seq = nnx.Sequential(lambda a: (a, a + 1), lambda a, b: {"x": a * b}, lambda x: x - 1)
    assert seq(3) == 11
    seen = []
    seq = nnx.Sequential(lambda x, rngs: seen.append(rngs) or x + 1, lambda x: x * 2)
    assert seq(1, rngs="r") == 4 and seen == ["r"]
    with pytest.raises(TypeError, match=r"layer 1 is not callable \(got int\)"):
        nnx.Sequential(lambda x: x, 3)(1)


# -- plain containers ------------------------------------------------------------
def test_plain_list_attribute_of_modules_just_works():
    class MLP(nnx.Module):
        def __init__(self):
            self.layers = [Linear(2, 2, i) for i in range(3)]

        def __call__(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    m = MLP()
    x = jnp.ones((1, 2))
    g, state = nnx.split(m)
    assert len(state["layers"]) == 3
    new = nnx.merge(g, state)
    _eq(new(x), m(x))
    out = jax.jit(lambda m, x: m(x))(m, x)
    _eq(out, m(x))
    assert [p for p, _ in nnx.iter_modules(m)] == [("layers", 0), ("layers", 1), ("layers", 2), ()]


def test_list_marked_items_are_leaves_or_static():
    ls = nnx.List([nnx.data(1), nnx.static("h"), 3, jnp.array(2.0)])
    assert list(ls)[:3] == [1, "h", 3]  # the marks are not stored
    leaves, treedef = jax.tree_util.tree_flatten(ls)
    assert leaves[0] == 1 and float(leaves[1]) == 2.0 and len(leaves) == 2
    doubled = jax.tree_util.tree_unflatten(treedef, [x * 2 for x in leaves])
    assert doubled[0] == 2 and doubled[1] == "h" and doubled[2] == 3
    assert jax.tree_util.tree_leaves(doubled)[0] == 2  # still data after unflatten
    merged = nnx.merge(*nnx.split(ls))
    assert jax.tree_util.tree_leaves(merged)[0] == 1


def test_list_marks_follow_edits():
    ls = nnx.List([nnx.data(1), 2, 3])
    ls[2] = nnx.data(7)
    ls.append(nnx.data(5))
    assert jax.tree_util.tree_leaves(ls) == [1, 7, 5]
    ls[0] = 4  # a plain value keeps a data index data
    del ls[1]
    ls.insert(0, nnx.data(9))
    assert jax.tree_util.tree_leaves(ls) == [9, 4, 7, 5]
    ls[1:3] = [10, nnx.data(11)]
    assert list(ls) == [9, 10, 11, 5]
    assert jax.tree_util.tree_leaves(ls) == [9, 11, 5]


def test_list_marked_items_under_jit():
    ls = nnx.List([nnx.data(jnp.array(1.0)), nnx.static(999)])
    out = jax.jit(lambda x: jax.tree.map(lambda v: v * 2, x))(ls)
    assert float(out[0]) == 2.0 and out[1] == 999


def test_list_static_mark_rejects_arrays():
    with pytest.raises(ValueError, match="nnx.static"):
        nnx.List([nnx.static(jnp.ones(2))])
