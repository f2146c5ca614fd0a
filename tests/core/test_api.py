"""The public graph functions with Flax's signatures (core/api.py, core/calls.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxfn as nnx


class Linear(nnx.Module):
    def __init__(self, din, dout, seed=0):
        self.kernel = nnx.Param(jax.random.normal(jax.random.key(seed), (din, dout)))
        self.bias = nnx.Param(jnp.zeros((dout,)))

    def __call__(self, x):
        return x @ self.kernel + self.bias


class Counter(nnx.Module):
    def __init__(self):
        self.count = nnx.BatchStat(jnp.zeros(()))

    def inc(self, by=1.0):
        self.count[...] += by
        return self.count[...]


class Net(nnx.Module):
    def __init__(self):
        self.linear = Linear(2, 3)
        self.counter = Counter()
        self.scale = nnx.Param(jnp.ones(()))


# -- leaf roots -----------------------------------------------------------------------
def test_split_merge_array_root_gives_the_array_itself():
    x = jnp.arange(3.0)
    graphdef, state = nnx.split(x)
    assert state is x
    assert nnx.merge(graphdef, state) is x
    graphdef, arrays, rest = nnx.split(x, jax.Array, ...)
    assert arrays is x and isinstance(rest, nnx.State) and len(rest) == 0
    assert nnx.merge(graphdef, arrays, rest) is x


def test_split_variable_root_state_is_a_detached_variable():
    v = nnx.Param(jnp.array(1.0))
    graphdef, state = nnx.split(v)
    assert isinstance(state, nnx.Param) and state is not v
    state[...] = 5.0
    assert float(v[...]) == 1.0  # the state is a copy
    nnx.update(v, state)
    assert float(v[...]) == 5.0
    v2 = nnx.merge(graphdef, state)
    assert v2 is state and float(v2[...]) == 5.0
    v3 = nnx.merge(graphdef, state, copy=True)
    assert v3 is not state and float(v3[...]) == 5.0


def test_split_variable_root_with_filters_puts_it_in_the_matching_group():
    v = nnx.Param(jnp.array(1.0))
    graphdef, stats, params, rest = nnx.split(v, nnx.BatchStat, nnx.Param, ...)
    assert isinstance(params, nnx.Param) and len(stats) == 0 and len(rest) == 0
    assert isinstance(nnx.merge(graphdef, stats, params, rest), nnx.Param)
    with pytest.raises(ValueError):
        nnx.split(v, nnx.BatchStat)


def test_state_of_a_variable_root_is_the_variable():
    v = nnx.Param(jnp.array(3.0))
    s = nnx.state(v)
    assert isinstance(s, nnx.Param) and float(s[...]) == 3.0


def test_split_static_root():
    graphdef, state = nnx.split(42)
    assert nnx.merge(graphdef, state) == 42


# -- merge forms ---------------------------------------------------------------------------
def test_merge_without_state_raises_type_error():
    graphdef, _ = nnx.split(Linear(2, 3))
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'state'"):
        nnx.merge(graphdef)


def test_merge_accepts_pure_dict_flat_state_and_leaf_list():
    m = Linear(2, 3)
    graphdef, state = nnx.split(m)
    for given in (nnx.to_pure_dict(state), nnx.to_flat_state(state)):
        m2 = nnx.merge(graphdef, given)
        assert isinstance(m2.kernel, nnx.Param)
        np.testing.assert_array_equal(m2.kernel[...], m.kernel[...])
    _, leaves = nnx.flatten(m, with_paths=False)
    m3 = nnx.merge(graphdef, leaves)
    np.testing.assert_array_equal(m3.bias[...], m.bias[...])
    with pytest.raises(ValueError, match="Incorrect number of leaves"):
        nnx.merge(graphdef, leaves[:1])


def test_graph_and_graph_updates_keywords_are_accepted_everywhere():
    m = Net()
    kw = dict(graph=False, graph_updates=False)
    graphdef, state = nnx.split(m, **kw)
    assert nnx.graphdef(m, **kw) == graphdef
    assert set(nnx.state(m, nnx.Param, **kw)) == {"linear", "scale"}
    m2 = nnx.merge(graphdef, state, **kw)
    assert nnx.clone(m2, **kw) is not m2
    assert [p for p, _ in nnx.iter_graph(m, **kw)][-1] == ()
    assert [p for p, _ in nnx.iter_modules(m, **kw)] == [("counter",), ("linear",), ()]
    assert nnx.find_duplicates(m, **kw) == []
    assert isinstance(nnx.recursive_map(lambda p, x: x, m, **kw), Net)
    popped = nnx.pop(m2, nnx.BatchStat, **kw)
    assert set(popped["counter"]) == {"count"}


# -- update ---------------------------------------------------------------------------------
def test_update_plain_dict_root_from_a_pure_dict():
    node = {"a": {"b": 1, "c": nnx.Param(jnp.array(2)), "d": 3}}
    param = node["a"]["c"]
    nnx.update(node, {"a": {"b": 4, "c": jnp.array(10)}})
    assert node["a"]["b"] == 4 and node["a"]["d"] == 3
    assert node["a"]["c"] is param and int(param[...]) == 10


def test_update_list_root_with_shared_dict_writes_the_shared_variable():
    a = {"w": nnx.Param(jnp.array(2))}
    g = [a, 3, a]
    _, state = nnx.split(g)
    pure = nnx.to_pure_dict(state)
    pure[0]["w"] = jnp.array(7)
    nnx.update(g, pure)
    assert int(g[0]["w"][...]) == 7 and int(g[2]["w"][...]) == 7


def test_update_tuple_root_cannot_rebind_an_entry():
    g = (jnp.zeros(2),)
    with pytest.raises(ValueError, match="inside a tuple"):
        nnx.update(g, {0: jnp.ones(2)})


def test_update_variable_root_needs_exactly_one_value():
    v = nnx.Param(jnp.array(1))
    nnx.update(v, nnx.State({}), nnx.Param(jnp.array(4)))
    assert int(v[...]) == 4
    with pytest.raises(ValueError, match="exactly one"):
        nnx.update(v, nnx.Param(jnp.array(1)), nnx.Param(jnp.array(2)))


def test_pop_from_a_plain_dict_root():
    node = {"a": {"b": jnp.array(1), "c": nnx.Param(jnp.array(2)), "d": jnp.array(3.0)}}
    popped = nnx.pop(node, (nnx.Param, lambda _, x: x < 2))
    assert int(popped["a"]["b"]) == 1 and int(popped["a"]["c"][...]) == 2
    assert list(node["a"]) == ["d"]


# -- clone / map / as_pure --------------------------------------------------------------------
def test_clone_arrays_copies_buffers_and_variables_false_shares_variables():
    m = Linear(2, 3)
    c = nnx.clone(m, arrays=True)
    assert c.kernel is not m.kernel
    np.testing.assert_array_equal(c.kernel[...], m.kernel[...])
    assert c.kernel[...].unsafe_buffer_pointer() != m.kernel[...].unsafe_buffer_pointer()
    shared = nnx.clone(m, variables=False)
    assert shared is not m and shared.kernel is m.kernel
    with pytest.raises(ValueError, match="arrays is True"):
        nnx.clone(m, variables=False, arrays=True)


def test_map_replaces_leaves_and_leaves_the_original_alone():
    m = Linear(2, 3)
    seen = []
    new = nnx.map(lambda p, v: (seen.append(p), v.replace(jnp.zeros_like(v[...])))[1], m)
    assert sorted(seen) == [("bias",), ("kernel",)]
    assert isinstance(new.kernel, nnx.Param)
    np.testing.assert_array_equal(new.kernel[...], jnp.zeros((2, 3)))
    assert float(jnp.abs(m.kernel[...]).sum()) > 0
    raw = nnx.map(lambda p, v: 0, m, recreate_variables=False)
    assert raw.kernel == 0 and not isinstance(raw.kernel, nnx.Variable)


def test_as_pure_unwraps_variables_in_any_pytree():
    tree = {"a": nnx.Param(jnp.array(1.0)), "b": [nnx.BatchStat(jnp.array(2.0)), 3]}
    out = nnx.as_pure(tree)
    assert float(out["a"]) == 1.0 and float(out["b"][0]) == 2.0 and out["b"][1] == 3
    assert nnx.pure is nnx.as_pure
    pure_state = nnx.as_pure(nnx.state(Linear(2, 3)))
    assert not isinstance(pure_state["kernel"], nnx.Variable)


# -- GraphState / unpack ----------------------------------------------------------------------
def test_unpack_merge_round_trip_and_filters():
    m = Net()
    gs = nnx.unpack(m)
    assert isinstance(gs, nnx.GraphState) and gs._graphdef == nnx.graphdef(m)
    m2 = nnx.merge(gs)
    np.testing.assert_array_equal(m2.linear.kernel[...], m.linear.kernel[...])
    params, rest = nnx.unpack(m, nnx.Param, ...)
    assert "counter" in rest and "counter" not in params
    m3 = nnx.merge(params, rest)
    assert isinstance(m3.counter, Counter)


def test_merge_graph_states_checks_types_and_graphdefs():
    a, b = nnx.unpack(Linear(2, 3)), nnx.unpack(Counter())
    with pytest.raises(ValueError, match="GraphDef must be the same"):
        nnx.merge(a, b)
    with pytest.raises(ValueError, match="Expected GraphState"):
        nnx.merge(a, nnx.state(Linear(2, 3)))


def test_graph_state_is_a_pytree_with_state_paths_and_swaps_its_state_on_set():
    m = Linear(2, 3)
    gs = nnx.unpack(m)
    mapped = jax.tree.map(lambda x: x * 0, gs)
    assert isinstance(mapped, nnx.GraphState)
    np.testing.assert_array_equal(nnx.merge(mapped).kernel[...], jnp.zeros((2, 3)))
    paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(gs)[0]]
    assert paths == [p for p, _ in jax.tree_util.tree_flatten_with_path(nnx.state(m))[0]]
    before = gs._state
    gs["kernel"] = jnp.ones((2, 3))
    assert gs._state is not before and "kernel" in before  # the old State is unchanged
    np.testing.assert_array_equal(nnx.merge(gs).kernel[...], jnp.ones((2, 3)))
    nnx.update(m, gs)
    np.testing.assert_array_equal(m.kernel[...], jnp.ones((2, 3)))


# -- call / apply -------------------------------------------------------------------------------
def test_call_under_jit_threads_the_state():
    pair = nnx.split(Counter())

    @jax.jit
    def step(pair):
        out, pair = nnx.call(pair).inc(2.0)
        return out, pair

    out, pair = step(pair)
    out, pair = step(pair)
    assert float(out) == 4.0
    assert float(nnx.merge(*pair).count[...]) == 4.0


def test_call_with_item_access_and_graphdef_apply():
    nodes = {"a": Counter(), "b": Counter()}
    _, pair = nnx.call(nnx.split(nodes))["b"].inc()
    merged = nnx.merge(*pair)
    assert float(merged["a"].count[...]) == 0.0 and float(merged["b"].count[...]) == 1.0
    graphdef, state = nnx.split(Linear(2, 3))
    y, (graphdef2, state2) = graphdef.apply(state)(jnp.ones((1, 2)))
    expected = jnp.ones((1, 2)) @ state["kernel"][...] + state["bias"][...]
    np.testing.assert_allclose(y, expected)
    assert graphdef2 == graphdef


# -- children / duplicates ------------------------------------------------------------------------
def test_iter_children_and_iter_module_children():
    m = Net()
    assert [k for k, _ in nnx.iter_children(m)] == ["counter", "linear", "scale"]
    assert [k for k, _ in nnx.iter_module_children(m)] == ["counter", "linear"]
    with pytest.raises(ValueError, match="expected a graph node"):
        list(nnx.iter_children(jnp.ones(2)))


def test_find_duplicates_only_filter():
    m = Net()
    m.other = m.linear
    m.tied = m.scale
    assert nnx.find_duplicates(m) == [[("linear",), ("other",)], [("scale",), ("tied",)]]
    assert nnx.find_duplicates(m, only=nnx.Param) == [[("scale",), ("tied",)]]


def test_graphdef_is_a_static_pytree_and_subscriptable():
    graphdef, state = nnx.split(Linear(2, 3))
    assert jax.tree.leaves(graphdef) == []
    out = jax.jit(lambda g, s: (g, s))(graphdef, state)
    assert out[0] == graphdef
    assert nnx.GraphDef[Linear] is nnx.GraphDef
    assert type(graphdef.nodes[0]).__name__ == "NodeDef"
    assert [type(n).__name__ for n in graphdef.nodes[1:]] == ["VariableDef", "VariableDef"]


def test_update_and_merge_with_a_tuple_root_of_model_and_optimizer():
    import optax

    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    state = nnx.state((model, opt))
    assert set(state) == {0, 1}
    nnx.update((model, opt), jax.tree.map(lambda x: x * 0, state))
    np.testing.assert_array_equal(model.kernel[...], jnp.zeros((2, 3)))
    m2, o2 = nnx.merge(*nnx.split((model, opt)))
    assert isinstance(m2, nnx.Linear) and isinstance(o2, nnx.Optimizer)


def test_set_metadata_on_matching_variables_in_place():
    m = Net()
    nnx.set_metadata(m, only=nnx.Param, differentiable=False)
    assert m.scale.get_metadata("differentiable") is False
    assert m.linear.kernel.get_metadata("differentiable") is False
    assert m.counter.count.get_metadata("differentiable") is None
    nnx.set_metadata(m, tag="all")
    assert m.counter.count.get_metadata("tag") == "all"


def test_map_gets_live_variables_and_keeps_returned_ones():
    m = Linear(2, 3)
    kernel = m.kernel

    def bump(path, v):
        v[...] += 1.0  # writes into `m`, as in Flax
        return v

    before = m.bias[...]
    same = nnx.map(bump, m)
    np.testing.assert_array_equal(m.bias[...], before + 1.0)
    assert same is not m and same.kernel is kernel  # the returned Variable is placed as is
    retyped = nnx.map(lambda p, v: nnx.Variable(jnp.zeros_like(v[...])), m)
    assert type(retyped.kernel) is nnx.Variable and type(m.kernel) is nnx.Param
    np.testing.assert_array_equal(retyped.bias[...], jnp.zeros(3))
