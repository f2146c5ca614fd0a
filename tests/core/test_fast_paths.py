"""The fast paths of split/state/merge agree with the general (path-based) route.

`split(node)` without filters walks the graph without paths and remembers its
leaves in GraphDef order on the State it returns; `merge(graphdef, state)` with
that same GraphDef takes the leaves by position. Anything else goes by paths.
"""

import collections
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxfn as nnx
from nnxfn import core
from nnxfn.core import program as fastpath
from nnxfn.core.state import partition_pairs


class Pair(nnx.Module):
    def __init__(self, k=0.0):
        self.kernel = nnx.Param(jnp.full((2, 2), k))
        self.bias = nnx.Param(jnp.zeros(2), tag="b")


class Big(nnx.Module):
    def __init__(self):
        self.layers = nnx.List([Pair(i) for i in range(3)])
        self.shared = self.layers[1]  # shared node
        self.alias = self.layers[0].kernel  # shared Variable
        self.plain = [Pair(7.0), {"b": jnp.ones(1), 3: nnx.BatchStat(jnp.zeros(1)), "s": "x"}]
        self.pair = (jnp.arange(2.0), None, 1.5)
        self.empty = nnx.Dict()
        self.count = nnx.BatchStat(jnp.array(0))
        self.rate = 0.5
        self.act = jax.nn.relu
        self.const = nnx.static((1, 2))
        self.raw = jnp.ones(3)


def _slow_split(node):
    graphdef, pairs = core.flatten_graph(node)
    return graphdef, core.State.from_flat_path(pairs)


def _slow_merge(graphdef, state):
    return core.unflatten_graph(graphdef, core.graph.flat_leaves([state]))


def _same_state(a, b):
    fa, fb = a.flat_state(), b.flat_state()
    assert [p for p, _ in fa] == [p for p, _ in fb]
    for (_, x), (_, y) in zip(fa, fb):
        assert type(x) is type(y)
        if isinstance(x, nnx.Variable):
            assert x.metadata_items() == y.metadata_items()
            x, y = x.raw_value, y.raw_value
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert repr(a) == repr(b)
    assert list(a) == list(b)


def _same_graph(a, b):
    ga, sa = _slow_split(a)
    gb, sb = _slow_split(b)
    assert ga == gb
    _same_state(sa, sb)
    assert core.find_duplicates(a) == core.find_duplicates(b)


def test_fast_split_matches_general_flatten():
    model = Big()
    graphdef, state = nnx.split(model)
    assert state._nnx_flat is not None  # took the fast path
    slow_graphdef, slow_state = _slow_split(model)
    assert graphdef == slow_graphdef and hash(graphdef) == hash(slow_graphdef)
    assert graphdef.root == slow_graphdef.root
    assert graphdef.num_leaves == slow_graphdef.num_leaves
    _same_state(state, slow_state)
    assert repr(graphdef) == repr(slow_graphdef)


def test_program_and_records_round_trip():
    graphdef, _ = nnx.split(Big())
    ops = graphdef.ops
    from nnxfn.core.graphdef import ops_from_root, root_from_ops  # the flat program

    assert ops_from_root(root_from_ops(ops)) == list(ops)
    rebuilt = core.GraphDef(graphdef.root, graphdef.num_leaves)
    assert rebuilt == graphdef and rebuilt.ops == list(ops)


def test_positional_merge_equals_path_merge():
    model = Big()
    graphdef, state = nnx.split(model)
    fast = nnx.merge(graphdef, state)
    slow = _slow_merge(graphdef, state)
    _same_graph(fast, slow)
    _same_graph(fast, model)
    assert fast.shared is fast.layers[1] and fast.alias is fast.layers[0].kernel
    assert fast.act is jax.nn.relu and fast.const == (1, 2) and fast.rate == 0.5
    assert fast.plain[1]["s"] == "x" and type(fast.pair) is tuple
    # as in Flax: split hands out the model's own Variables and merge uses them
    assert fast.count is state["count"] is model.count
    copied = nnx.merge(graphdef, state, copy=True)
    assert copied.count is not model.count and int(copied.count[...]) == int(model.count[...])


def test_positional_merge_sees_writes_to_the_state_variables():
    model = Pair()
    graphdef, state = nnx.split(model)
    state["kernel"].value = jnp.ones((2, 2))
    state["bias"].set_metadata("tag", "changed")
    merged = nnx.merge(graphdef, state)
    np.testing.assert_array_equal(merged.kernel.value, np.ones((2, 2)))
    assert merged.bias.get_metadata("tag") == "changed"
    assert merged.kernel is state["kernel"] is model.kernel


def test_cycles_round_trip_fast():
    a = Pair()
    a.me = a
    a.children = nnx.List([a])
    graphdef, state = nnx.split(a)
    assert state._nnx_flat is not None
    b = nnx.merge(graphdef, state)
    assert b.me is b and b.children[0] is b
    _same_graph(a, b)


@pytest.mark.parametrize(
    "derive",
    [
        lambda s: jax.tree.map(lambda x: x, s),
        lambda s: s | nnx.State({}),
        lambda s: nnx.State.merge(s),
        lambda s: s.filter(...),
        lambda s: s.replace_by_pure_dict({}),
        lambda s: pickle.loads(pickle.dumps(s)),
        lambda s: nnx.State(s),
    ],
)
def test_derived_states_go_by_paths(derive):
    model = Big()
    graphdef, state = nnx.split(model)
    other = derive(state)
    assert other._nnx_flat is None
    _same_graph(nnx.merge(graphdef, other), model)


def test_another_graphdef_goes_by_paths():
    model = Pair()
    graphdef, state = nnx.split(model)
    graphdef2 = nnx.graphdef(model)
    assert graphdef2 == graphdef and graphdef2 is not graphdef
    _same_graph(nnx.merge(graphdef2, state), model)  # equal, not the same: paths


def test_filtered_and_partial_states_still_checked():
    model = Pair()
    graphdef, state = nnx.split(model)
    params = state.filter(lambda p, v: p == ("kernel",))
    with pytest.raises(ValueError, match="bias"):
        nnx.merge(graphdef, params)
    with pytest.raises(ValueError, match="extra"):
        nnx.merge(graphdef, state | nnx.State({"extra": jnp.ones(1)}))
    graphdef_p, p, rest = nnx.split(model, nnx.Param, ...)
    _same_graph(nnx.merge(graphdef_p, p, rest), model)


def test_merge_of_split_state_with_extra_state_goes_by_paths():
    model = Pair()
    graphdef, state = nnx.split(model)
    with pytest.raises(ValueError, match="extra"):
        nnx.merge(graphdef, state, nnx.State({"extra": jnp.ones(1)}))


def test_foreign_pytrees_and_unhashable_statics_on_the_one_walk():
    class WithTuple(nnx.Module):
        def __init__(self):
            self.point = collections.namedtuple("P", "x y")(jnp.ones(1), jnp.zeros(1))

    graphdef, state = nnx.split(WithTuple())  # a foreign pytree: the same walk, merged by position
    assert state._nnx_flat is not None
    merged = nnx.merge(graphdef, state)
    assert type(merged.point).__name__ == "P"

    class Bad(nnx.Module):
        def __init__(self):
            self.inner = Pair()
            self.inner.bad = {"v": nnx.Param(jnp.ones(1)), "s": {1, 2}}

    # unhashable static values are kept by value (as in Flax), on every route
    graphdef, state = nnx.split(Bad())
    assert nnx.merge(graphdef, state).inner.bad["s"] == {1, 2}
    assert list(nnx.state(Bad())["inner"]["bad"]) == ["v"]


def test_state_function_fast_path_matches(caching_on):
    model = Big()
    _same_state(nnx.state(model), _slow_split(model)[1])
    # nothing changed: the same State (remembered) or an equal one (caching off)
    assert (nnx.state(model) is nnx.split(model)[1]) == caching_on
    _same_state(nnx.state(model), nnx.split(model)[1])


def test_split_of_container_root_and_clone():
    models = (Pair(1.0), [Pair(2.0)], {"a": Pair(3.0)})
    graphdef, state = nnx.split(models)
    assert state._nnx_flat is not None
    _same_state(state, _slow_split(models)[1])
    _same_graph(nnx.merge(graphdef, state), models)
    _same_graph(nnx.clone(Big()), Big())


def test_split_inside_jit_with_tracers():
    model = Pair()

    @jax.jit
    def f(k):
        m = nnx.merge(*nnx.split(model), copy=True)  # `model` is closed over: its own Variables stay outside
        g, s = nnx.split(m)
        s["kernel"].value = k
        return nnx.merge(g, s).kernel.value

    np.testing.assert_array_equal(f(jnp.ones((2, 2))), np.ones((2, 2)))


def test_state_is_immutable_and_holds_the_models_variables():
    model = Pair()
    graphdef, state = nnx.split(model)
    with pytest.raises(TypeError, match="immutable"):
        state["kernel"] = 1
    with pytest.raises(TypeError, match="immutable"):
        state._nnx_flat = None
    assert state["kernel"] is model.kernel  # as in Flax: the model's own Variables
    merged = nnx.merge(graphdef, state)
    merged.kernel.value = jnp.ones((2, 2))
    np.testing.assert_array_equal(model.kernel.value, np.ones((2, 2)))
    copied = nnx.merge(graphdef, state, copy=True)
    copied.kernel.value = jnp.zeros((2, 2))
    np.testing.assert_array_equal(model.kernel.value, np.ones((2, 2)))


def test_graphdef_pickles():
    graphdef, state = nnx.split(Pair())
    again = pickle.loads(pickle.dumps(graphdef))
    assert again == graphdef
    _same_graph(nnx.merge(again, state), Pair())


def test_new_attribute_sets_are_seen():
    model = Pair()
    nnx.split(model)
    model.extra = nnx.BatchStat(jnp.ones(1))
    graphdef, state = nnx.split(model)
    assert "extra" in state
    assert nnx.merge(graphdef, state).extra.value.shape == (1,)
    del model.extra
    model.rate = nnx.static(0.1)
    graphdef, state = nnx.split(model)
    assert "extra" not in state and nnx.merge(graphdef, state).rate == 0.1
    _same_graph(nnx.merge(graphdef, state), model)


def _slow_partition(node, *filters, exhaustive=True):
    graphdef, pairs = core.flatten_graph(node)
    return graphdef, partition_pairs(pairs, filters, exhaustive)


def test_filtered_split_matches_general_route():
    model = Big()
    filters = (nnx.BatchStat, "b", ...)
    graphdef, *states = nnx.split(model, *filters)
    slow_graphdef, slow_states = _slow_partition(model, *filters)
    assert graphdef == slow_graphdef
    assert len(states) == len(slow_states) == 3
    for s, slow in zip(states, slow_states):
        assert s._nnx_flat is not None
        _same_state(s, slow)
    got = nnx.state(model, nnx.BatchStat, "b")
    for s, slow in zip(got, _slow_partition(model, nnx.BatchStat, "b", exhaustive=False)[1]):
        _same_state(s, slow)
        assert s._nnx_flat is None


def test_filtered_positional_merge_in_any_order():
    model = Big()
    graphdef, params, stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    for order in [(params, stats, rest), (rest, params, stats)]:
        fast = nnx.merge(graphdef, *order)
        _same_graph(fast, _slow_merge(graphdef, nnx.State.merge(*order)))
        _same_graph(fast, model)


def test_filtered_states_that_do_not_belong_together_go_by_paths():
    model = Big()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    _, params2, rest2 = nnx.split(model, nnx.Param, ...)
    _same_graph(nnx.merge(graphdef, params2, rest), model)  # another split's State
    with pytest.raises(ValueError, match="no value for node.count"):
        nnx.merge(graphdef, params)  # one part only
    with pytest.raises(ValueError, match="no value for node.count"):
        nnx.merge(graphdef, params, params)  # the same part twice
    _same_graph(nnx.merge(graphdef, params, rest, nnx.State({})), model)
    graphdef1, everything = nnx.split(model, ...)
    _same_graph(nnx.merge(graphdef1, everything), model)


def test_filtered_split_errors_are_unchanged():
    model = Big()
    with pytest.raises(ValueError) as fast:
        nnx.split(model, nnx.Param)
    with pytest.raises(ValueError) as slow:
        _slow_partition(model, nnx.Param)
    assert str(fast.value) == str(slow.value)
    with pytest.raises(ValueError):
        nnx.split(model, ..., nnx.Param)


def test_unflatten_leaves_equals_path_unflatten():
    model = Big()
    graphdef, pairs = core.flatten_graph(model, copy=False)
    leaves = [leaf for _, leaf in pairs]
    by_position = fastpath.unflatten_leaves(graphdef, leaves, copy=False)
    by_path = core.unflatten_graph(graphdef, dict(pairs), copy=False)
    _same_graph(by_position, by_path)
    assert by_position.count is model.count  # copy=False keeps the Variables
    copied = fastpath.unflatten_leaves(graphdef, leaves)
    assert copied.count is not model.count
    _same_graph(copied, model)
    raw = [getattr(leaf, "raw_value", leaf) for leaf in leaves]  # raw values get boxed
    _same_graph(fastpath.unflatten_leaves(graphdef, raw), model)
    with pytest.raises(fastpath.LeafMismatch):
        fastpath.unflatten_leaves(graphdef, leaves[:-1])
    wrong = [nnx.Cache(leaf.raw_value) if isinstance(leaf, nnx.BatchStat) else leaf for leaf in leaves]
    with pytest.raises(fastpath.LeafMismatch):
        fastpath.unflatten_leaves(graphdef, wrong)


def test_module_as_pytree_round_trip_and_errors():
    model = Big()
    leaves, treedef = jax.tree_util.tree_flatten(model)
    again = jax.tree_util.tree_unflatten(treedef, leaves)
    _same_graph(again, model)
    doubled = jax.tree.map(lambda x: x * 2, model)
    np.testing.assert_array_equal(doubled.layers[2].kernel.value, 4 * np.ones((2, 2)))
    assert doubled.shared is doubled.layers[1]
    is_var = lambda x: isinstance(x, nnx.Variable)  # noqa: E731
    leaves, treedef = jax.tree_util.tree_flatten(model, is_leaf=is_var)
    bad = [nnx.Cache(leaf.raw_value) if isinstance(leaf, nnx.BatchStat) else leaf for leaf in leaves]
    with pytest.raises(ValueError, match="count"):  # the path-based error
        jax.tree_util.tree_unflatten(treedef, bad)


class _Scaled(nnx.Module):
    """Keys sort as a (static), w (Param), z (static): the merge reorders."""

    def __init__(self, w: float, a: int, z: str):
        self.a = a
        self.w = nnx.Param(jnp.array(w))
        self.z = z


def _runs_model() -> nnx.List:
    # Two runs of equal layers (a=1 three times, then a=2 twice), a lone
    # layer with another shape, and a layer sharing a Variable with the first.
    layers = [_Scaled(float(i), 1, "x") for i in range(3)] + [_Scaled(float(i), 2, "x") for i in (3, 4)]
    shared = _Scaled(5.0, 1, "x")
    shared.w = layers[0].w
    return nnx.List([*layers, nnx.Linear(2, 3, rngs=nnx.Rngs(0)), shared])


@pytest.mark.parametrize("copy", [False, True])
def test_merge_of_runs_of_equal_layers(copy):
    model = _runs_model()
    graphdef, state = nnx.split(model)
    merged = nnx.merge(graphdef, state, copy=copy)
    assert [m.a for m in merged[:5]] == [1, 1, 1, 2, 2]
    assert all(m.z == "x" for m in merged[:5])
    assert [float(m.w.value) for m in merged[:5]] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert merged[6].w is merged[0].w  # the sharing is kept
    np.testing.assert_array_equal(merged[5].kernel.value, model[5].kernel.value)
    for i in range(5):
        assert (merged[i].w is state[i]["w"]) is not copy  # copy=False: the State's own
    assert len({id(m) for m in merged}) == 7


def test_merge_of_runs_inside_jit_marks_traced_objects():
    model = _runs_model()
    graphdef, state = nnx.split(model)

    @jax.jit
    def f(state):
        merged = nnx.merge(graphdef, state)
        assert all(m.__dict__.get("_nnx_traced") for m in merged[:5])
        return nnx.state(merged)

    out = f(state)
    assert float(out[4]["w"].value) == 4.0
    assert not any("_nnx_traced" in m.__dict__ for m in nnx.merge(graphdef, state)[:5])


def test_unflatten_by_position_of_runs_checks_each_leaf():
    model = _runs_model()
    graphdef, state = nnx.split(model)
    leaves = [v for _, v in state.flat_state()]
    rebuilt = fastpath.unflatten_leaves(graphdef, leaves, copy=True)
    assert [float(m.w.value) for m in rebuilt[:5]] == [0.0, 1.0, 2.0, 3.0, 4.0]
    leaves[1] = nnx.BatchStat(leaves[1].value)  # not the Param its position holds
    with pytest.raises(fastpath.LeafMismatch):
        fastpath.unflatten_leaves(graphdef, leaves, copy=True)


def test_split_of_a_merged_graph_reuses_its_graphdef_and_state(caching_on):
    model = nnx.Dict(layers=_runs_model(), extra=nnx.data([nnx.Param(jnp.ones(2))]))
    graphdef, state = nnx.split(model)
    merged = nnx.merge(graphdef, state)
    g2, s2 = nnx.split(merged)
    assert (g2 is graphdef and s2 is state) == caching_on  # remembered only while caching is on
    assert g2 == graphdef
    _same_state(s2, state)
    merged.layers[0].w.value = jnp.array(7.0)  # a value write: the State holds that Variable
    assert float(nnx.split(merged)[1]["layers"][0]["w"].value) == 7.0
    merged.extra.append(nnx.Param(jnp.zeros(3)))  # a plain list edited in place
    g3, s3 = nnx.split(merged)
    assert g3 != graphdef and s3["extra"][1].value.shape == (3,)
    merged.layers[1].bias = nnx.Param(jnp.zeros(1))  # a structural change
    assert "bias" in nnx.split(merged)[1]["layers"][1]
    copied = nnx.merge(graphdef, state, copy=True)  # not the State's Variables: walked anew
    assert nnx.split(copied)[1] is not state
    assert nnx.split(copied)[0] == graphdef


def test_runs_of_equal_layers_stop_at_their_parent():
    # The last layer of `a` and the layer `b` are equal and follow each other
    # in the program, but sit in different parents: not one run.
    model = nnx.Dict(a=nnx.List([_Scaled(0.0, 1, "x"), _Scaled(1.0, 1, "x")]), b=_Scaled(2.0, 1, "x"))
    graphdef, state = nnx.split(model)
    for copy in (False, True):
        merged = nnx.merge(graphdef, state, copy=copy)
        assert [float(m.w.value) for m in merged.a] == [0.0, 1.0]
        assert float(merged.b.w.value) == 2.0
    same = jax.tree.map(lambda x: x, model)  # the Module pytree path unflattens by position
    assert float(same.b.w.value) == 2.0 and len(same.a) == 2
