"""Flax's module namespaces (nnx.graph, graphlib, statelib, filterlib, traversals, extract,
ids, module, spmd, ...: thin modules over nnxfn's own implementations) and the behaviour
of the names they add."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxfn as nnx
from nnxfn import graph, statelib


def test_namespaces_reexport_the_same_objects():
    assert nnx.graph.GraphDef is nnx.GraphDef is nnx.graphlib.GraphDef
    assert graph.split is nnx.split and graph.merge is nnx.merge
    assert statelib.State is nnx.State and statelib.to_pure_dict is nnx.to_pure_dict
    assert nnx.graphlib.Variable is nnx.Variable  # any nnxfn name, as Flax's graphlib has it
    assert nnx.extract.NodeStates is nnx.NodeStates
    assert nnx.variables is nnx.state


def test_nnxfn_and_core_export_one_object_per_name():
    import nnxfn.core as core

    shared = [name for name in core.__all__ if hasattr(nnx, name)]
    assert {"split", "merge", "state", "graphdef", "clone", "update", "pop", "iter_graph"} <= set(shared)
    assert {"find_duplicates", "recursive_map", "set_caching", "caching"} <= set(shared)
    assert [name for name in shared if getattr(nnx, name) is not getattr(core, name)] == []
    assert graph.update is nnx.update is nnx.interop.update


def test_split_of_a_leaf_root_agrees_everywhere():
    import nnxfn.core as core

    x = jnp.arange(2.0)
    for split in (nnx.split, core.split, graph.split):
        graphdef, state = split(x)
        assert state is x and nnx.merge(graphdef, state) is x
    v = nnx.Param(jnp.ones(2))
    (_, a), (_, b) = nnx.split(v), core.split(v)
    assert type(a) is type(b) is nnx.Param and a is not v and b is not v
    np.testing.assert_array_equal(a[...], b[...])


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


# -- graphlib: registering a graph node type with Flax's callbacks ---------------------------
class Box:
    """A container registered as a graph node (identity kept, children by key)."""

    def __init__(self, **items):
        self.items = dict(items)


def _register_box():
    if not nnx.graphlib.is_node_type(Box):
        nnx.graphlib.register_graph_node_type(
            Box,
            flatten=lambda b: (sorted(b.items.items()), None),
            set_key=lambda b, k, v: b.items.__setitem__(k, v),
            pop_key=lambda b, k: b.items.pop(k),
            create_empty=lambda aux: Box(),
            clear=lambda b: b.items.clear(),
            init=lambda b, pairs: b.items.update(pairs),
        )


def test_register_graph_node_type_gives_identity_and_commits():
    _register_box()
    shared = nnx.Param(jnp.ones(2))
    inner = Box(p=shared)
    outer = Box(a=inner, b=inner, q=shared)
    graphdef, state = nnx.split(outer)
    assert set(state) == {"a"}  # the shared Box and Param are one entry
    again = nnx.merge(graphdef, state, copy=True)
    assert type(again) is Box and again.items["a"] is again.items["b"]
    assert again.items["q"] is again.items["a"].items["p"]

    @nnx.jit
    def bump(box):
        box.items["q"][...] += 1

    bump(outer)
    np.testing.assert_allclose(inner.items["p"][...], [2.0, 2.0])
    with pytest.raises(ValueError, match="already registered"):
        _register_box_again()


def _register_box_again():
    nnx.graphlib.register_graph_node_type(Box, *(lambda *a: None,) * 6)


def test_graph_predicates_and_graph_pop():
    _register_box()
    model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    g = nnx.graphlib
    assert g.is_node_leaf(model.kernel) and g.is_node_leaf(jnp.ones(1)) and not g.is_node_leaf(model)
    assert g.is_node_type(nnx.Linear) and g.is_node_type(list) and not g.is_node_type(int)
    assert not g.is_pytree_node(model) and g.is_pytree_node(model, check_graph_registry=False)
    (params,) = g.graph_pop(model, (nnx.Param,))
    assert set(params) == {"kernel", "bias"} and not hasattr(model, "kernel")
    assert g.graph_pop(model, ()) == ()


# -- module / deprecations / proxy_caller / compat ---------------------------------------------
def test_first_from_and_sow_defaults():
    assert nnx.module.first_from(None, 0, 1, error_msg="x") == 0
    with pytest.raises(ValueError, match="no rate given"):
        nnx.module.first_from(None, None, error_msg="no rate given")
    m = nnx.Module()
    m.sow(nnx.Intermediate, "seen", 1)
    m.sow(nnx.Intermediate, "seen", 2)
    assert m.seen[...] == (1, 2) == nnx.module.tuple_reduce(nnx.module.tuple_reduce((), 1), 2)
    assert nnx.module.tuple_init() == ()


def test_deprecated_alias_warns_and_delegates():
    def new_api(x):
        """Doubles."""
        return 2 * x

    old = nnx.deprecations.deprecated(new_api)
    with pytest.warns(DeprecationWarning, match="Use .*new_api instead"):
        assert old(3) == 6
    assert old.__name__ == "new_api" and old.__wrapped__ is new_api
    assert old.__doc__.startswith(".. deprecated::") and old.__doc__.endswith("Doubles.")


def test_delayed_accessor_replays_accesses():
    pc = nnx.proxy_caller
    accessor = pc.DelayedAccessor().layers[1].kernel
    assert accessor.actions == (pc.GetAttr("layers"), pc.GetItem(1), pc.GetAttr("kernel"))
    model = nnx.Sequential(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.Linear(3, 1, rngs=nnx.Rngs(1)))
    assert accessor(model) is model.layers[1].kernel
    seen = []
    proxy = pc.CallableProxy(lambda acc, *args: seen.append((acc, args)))
    proxy.a["b"](1, 2)
    assert seen == [(pc.DelayedAccessor((pc.GetAttr("a"), pc.GetItem("b"))), (1, 2))]


def test_compat_names_pin_graph_mode_as_flax():
    assert nnx.compat.backup_keys.func is nnx.rnglib.backup_keys
    assert nnx.compat.backup_keys.keywords == {"graph": True}
    assert nnx.compat.jit.func is nnx.jit
    assert nnx.compat.jit.keywords == {"graph": True, "graph_updates": True}


# -- statelib, extract, spmd -------------------------------------------------------------------
def test_state_map_difference_and_flat_state():
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    state = nnx.state(model)
    shapes = state.map(lambda path, v: v.replace(jnp.zeros(v.shape)))
    assert shapes["kernel"][...].shape == (2, 3) and float(shapes["kernel"][...].sum()) == 0.0
    rest = state - nnx.state(model, "kernel")  # no tag: nothing removed
    assert set(rest) == {"kernel", "bias"}
    assert set(state - {"kernel": 0}) == {"bias"} == set(nnx.statelib.diff(state, {"kernel": 0}))
    flat = state.flat_state()
    assert isinstance(flat, nnx.FlatState) and flat.paths == (("bias",), ("kernel",))
    assert set(flat.to_nested_state()) == {"bias", "kernel"}
    with pytest.raises(TypeError):
        state.raw_mapping["bias"] = None  # read-only: a State is immutable


def test_create_path_filters_groups_paths_by_value():
    state = nnx.State({"a": 0, "b": {"c": 0, "d": 1}})
    filters = nnx.statelib.create_path_filters(state)
    axes = nnx.StateAxes(filters)
    assert axes.map_prefix(("b", "c"), None) == 0 and axes.map_prefix(("b", "d"), None) == 1


def test_prefix_mappings():
    assert isinstance(nnx.DiffState(0), nnx.extract.PrefixMapping)
    assert isinstance(nnx.StateSharding({...: None}), nnx.extract.PrefixMapping)
    assert nnx.DiffState(0, nnx.BatchStat).map_prefix(("s",), nnx.BatchStat(1))
    assert not nnx.DiffState(0).map_prefix(("s",), nnx.BatchStat(1))
    axes = nnx.StateAxes({nnx.Param: 0, ...: None})
    assert axes.get(nnx.Param) == 0 and axes.get("nope", 7) == 7 and nnx.Param in axes
    assert axes.map_prefix(("k",), nnx.BatchStat(1)) is None
    with pytest.raises(TypeError):
        reversed(axes)  # as any Mapping
    sharding = nnx.StateSharding({nnx.Param: "p"})
    assert sharding.shardings == ("p",) and sharding.filters == (nnx.Param,)
    with pytest.raises(ValueError, match="no filter matches the leaf at k"):
        sharding.map_prefix(("k",), nnx.BatchStat(1))


def test_node_states_replace():
    tree = nnx.to_tree(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))
    other = tree.replace(metadata="m")
    assert other.metadata == "m" and other.graphdef == tree.graphdef and tree.metadata is None
    assert tree.replace(graphdef=None)._graphdef is None


def test_spmd_add_and_remove_axis_on_variables():
    seen = []

    class Tracked(nnx.Param):
        def add_axis(self, index, name):
            seen.append(("add", index, name))

        def remove_axis(self, index, name):
            seen.append(("remove", index, name))

    tree = {"w": Tracked(jnp.ones((2, 3)), out_sharding=("a", "b"), other=("x",))}
    meta = {nnx.PARTITION_NAME: "layers", "other": "y"}
    assert nnx.spmd.add_axis(tree, 1, meta) is tree
    assert tree["w"].out_sharding == ("a", "layers", "b") and tree["w"].other == ("x", "y")
    nnx.spmd.remove_axis(tree, 1, meta)
    assert tree["w"].out_sharding == ("a", "b") and tree["w"].other == ("x",)
    assert seen == [("add", 1, "layers"), ("remove", 1, "layers")]
    with pytest.raises(ValueError, match="expects its annotation out_sharding"):
        nnx.spmd.remove_axis(tree, 0, meta)
    with pytest.raises(ValueError, match="no 'partition_name' entry"):
        nnx.spmd.add_axis(tree, 0, {})


# -- switches, records, containers ----------------------------------------------------------
def test_mode_switches_expose_their_stack():
    assert nnx.set_graph_mode.get_default() is True and nnx.variablelib.use_eager_sharding.get_default()
    with nnx.variablelib.use_eager_sharding(False):
        assert nnx.variablelib.use_eager_sharding.get_stack()[-1] is False
        assert nnx.variablelib.using_eager_sharding() is False
    assert nnx.variablelib.using_eager_sharding() is True
    with pytest.raises(TypeError, match="expected True or False"):
        nnx.variablelib.use_eager_sharding(1)


def test_graphlib_static_is_compared_by_value():
    Static = nnx.graphlib.Static
    assert Static(3) == Static(3) and hash(Static(3)) == hash(Static(3)) and Static(3) != Static(4)
    assert jax.tree.leaves({"a": Static(3)}) == []  # a leafless pytree node


def test_list_train_and_eval_reach_its_modules():
    layers = nnx.List([nnx.Dropout(0.5), nnx.BatchNorm(2, rngs=nnx.Rngs(0)), 3])
    layers.eval()
    assert layers[0].deterministic is True and layers[1].use_running_average is True
    layers.train()
    assert layers[0].deterministic is False and layers[1].use_running_average is False
    assert [i for i, _ in layers.iter_children()] == [0, 1]
    assert len(list(layers.iter_modules())) == 2


def test_custom_vjp_records_its_arguments():
    f = nnx.custom_vjp(lambda a, b, c: a * b, nondiff_argnums=(1, nnx.DiffState(2, nnx.BatchStat)))
    assert f.nondiff_argnums == (1, nnx.DiffState(2, nnx.BatchStat)) and f.jax_nondiff_argnums == (1,)
    assert f.diff_filter == {1: False, 2: nnx.DiffState(-1, nnx.BatchStat)}


def test_split_inputs_with_a_context_tag():
    model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))

    @nnx.transforms.general.split_inputs(ctxtag="step")
    @jax.jit
    @nnx.transforms.general.merge_inputs(ctxtag="step")
    def shift(m, x):
        m.bias[...] += 1.0
        return m(x)

    out = shift(model, jnp.zeros((1, 2)))
    np.testing.assert_allclose(out, [[1.0, 1.0]])
    np.testing.assert_allclose(model.bias[...], [1.0, 1.0])


def test_flip_sequences_batch_major():
    xs = jnp.arange(12.0).reshape(2, 3, 2)  # (batch, time, features)
    lengths = jnp.array([3, 2])
    out = nnx.nn.recurrent.flip_sequences(xs, lengths, num_batch_dims=1, time_major=False)
    np.testing.assert_allclose(out[0], xs[0, ::-1])
    np.testing.assert_allclose(out[1, :2], xs[1, 1::-1])  # first 2 steps reversed
    np.testing.assert_allclose(out[1, 2], xs[1, 2])  # padding stays at the end
    time_major = nnx.nn.recurrent.flip_sequences(jnp.swapaxes(xs, 0, 1), lengths, 1, True)
    np.testing.assert_allclose(jnp.swapaxes(time_major, 0, 1), out)


def test_bidirectional_draws_carries_from_its_stream():
    cell = lambda: nnx.SimpleCell(2, 3, carry_init=nnx.initializers.normal(), rngs=nnx.Rngs(0))  # noqa: E731
    bi = nnx.Bidirectional(nnx.RNN(cell()), nnx.RNN(cell()), rngs=nnx.Rngs(carry=5))
    assert int(bi.rngs.count[...]) == 0
    bi(jnp.ones((1, 4, 2)))
    assert int(bi.rngs.count[...]) == 2  # one initial carry per direction
    assert int(bi.forward_rnn.rngs.count[...]) == 0
