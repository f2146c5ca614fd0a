"""split/merge/state/graphdef/update/pop/clone/iter_graph/... on object graphs."""

import collections
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxfn as nnx


class Linear(nnx.Module):
    def __init__(self, din, dout, seed=0):
        key = jax.random.key(seed)
        self.kernel = nnx.Param(jax.random.normal(key, (din, dout)))
        self.bias = nnx.Param(jnp.zeros((dout,)))
        self.in_features, self.out_features = din, dout

    def __call__(self, x):
        return x @ self.kernel + self.bias


class Block(nnx.Module):
    def __init__(self):
        self.linear = Linear(2, 3, seed=1)
        self.mean = nnx.BatchStat(jnp.zeros(3))
        self.rate = 0.5

    def __call__(self, x):
        return self.linear(x) - self.mean


class InitCounter(nnx.Module):
    calls = 0

    def __init__(self):
        type(self).calls += 1
        self.w = nnx.Param(jnp.arange(3.0))
        self.child = NoInit.__new__(NoInit)
        self.child.v = nnx.BatchStat(jnp.ones(2))


class NoInit(nnx.Module):
    def __init__(self):
        raise AssertionError("__init__ must not run during merge")


def _eq(a, b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# -- split / merge ----------------------------------------------------------
def test_split_merge_roundtrip_values_and_types():
    block = Block()
    graphdef, state = nnx.split(block)
    new = nnx.merge(graphdef, state)
    assert type(new) is Block and type(new.linear) is Linear
    assert new is not block and new.linear is not block.linear
    assert new.linear.kernel is block.linear.kernel  # merge uses the State's Variables (Flax)
    assert type(new.linear.kernel) is nnx.Param and type(new.mean) is nnx.BatchStat
    _eq(new.linear.kernel[...], block.linear.kernel[...])
    assert new.rate == 0.5 and new.linear.in_features == 2
    x = jnp.ones((4, 2))
    _eq(new(x), block(x))


def test_split_hands_out_the_models_variables_clone_copies_them():
    block = Block()
    _, state = nnx.split(block)
    assert state["linear"]["kernel"] is block.linear.kernel
    block.linear.bias[...] = jnp.full(3, 7.0)
    _eq(state["linear"]["bias"][...], jnp.full(3, 7.0))
    twin = nnx.clone(block)
    assert twin.linear.kernel is not block.linear.kernel
    twin.linear.bias[...] = jnp.zeros(3)
    _eq(block.linear.bias[...], jnp.full(3, 7.0))


def test_repeated_split_is_reused_until_structure_changes(caching_on):
    block = Block()
    g1, s1 = nnx.split(block)
    g2, s2 = nnx.split(block)
    assert (g2 is g1 and s2 is s1) == caching_on  # nothing changed: the cached pair
    assert g2 == g1 and s2["linear"]["kernel"] is s1["linear"]["kernel"]
    block.extra = nnx.Param(jnp.ones(2))
    g3, s3 = nnx.split(block)
    assert g3 != g1 and "extra" in s3 and "extra" not in s1
    block.plain = [nnx.Param(jnp.zeros(1))]
    g4, s4 = nnx.split(block)
    block.plain.append(nnx.Param(jnp.ones(1)))  # an in-place edit of a plain list
    g5, s5 = nnx.split(block)
    assert len(s5["plain"]) == 2 and len(s4["plain"]) == 1
    block.linear.kernel.set_metadata("tag", "t")  # metadata lives in the GraphDef
    g6, _ = nnx.split(block)
    assert g6 is not g5 and g6 != g5


def test_split_with_filters_partitions():
    block = Block()
    graphdef, params, stats = nnx.split(block, nnx.Param, nnx.BatchStat)
    assert sorted(p for p, _ in params.flat_state()) == [("linear", "bias"), ("linear", "kernel")]
    assert [p for p, _ in stats.flat_state()] == [("mean",)]
    new = nnx.merge(graphdef, params, stats)
    _eq(new.mean[...], jnp.zeros(3))
    # order of states does not matter
    new2 = nnx.merge(graphdef, stats, params)
    _eq(new2.linear.kernel[...], block.linear.kernel[...])


def test_merge_never_calls_init():
    InitCounter.calls = 0
    m = InitCounter()
    assert InitCounter.calls == 1
    graphdef, state = nnx.split(m)
    new = nnx.merge(graphdef, state)
    assert InitCounter.calls == 1
    assert type(new.child) is NoInit
    _eq(new.child.v[...], jnp.ones(2))
    clone = nnx.clone(m)
    assert InitCounter.calls == 1 and type(clone.child) is NoInit


def test_merge_error_missing_path():
    graphdef, params, _ = nnx.split(Block(), nnx.Param, ...)
    with pytest.raises(ValueError, match=r"no value for node\.mean"):
        nnx.merge(graphdef, params)


def test_merge_error_extra_path():
    graphdef, state = nnx.split(Block())
    extra = nnx.State({"linear": {"extra": jnp.ones(1)}})
    with pytest.raises(ValueError, match=r"node\.linear\.extra.*does not have"):
        nnx.merge(graphdef, state, extra)


def test_merge_error_wrong_variable_type():
    graphdef, params, stats = nnx.split(Block(), nnx.Param, ...)
    wrong = nnx.State({"mean": nnx.Param(jnp.zeros(3))})
    with pytest.raises(ValueError, match=r"node\.mean is a BatchStat.*holds a Param"):
        nnx.merge(graphdef, params, wrong)


def test_merge_accepts_raw_arrays_for_variables_and_pure_dicts():
    block = Block()
    graphdef, state = nnx.split(block)
    pure = state.to_pure_dict()
    new = nnx.merge(graphdef, pure)
    assert type(new.linear.kernel) is nnx.Param
    _eq(new.linear.kernel[...], block.linear.kernel[...])


def test_shared_modules_and_variables_restored():
    m = Block()
    m.twin = m.linear
    m.tied = m.linear.kernel
    graphdef, state = nnx.split(m)
    # shared objects are stored once, at their first path
    paths = [p for p, _ in state.flat_state()]
    assert ("twin", "kernel") not in paths and ("tied",) not in paths
    assert ("linear", "kernel") in paths
    new = nnx.merge(graphdef, state)
    assert new.twin is new.linear
    assert new.tied is new.linear.kernel


def test_a_bare_jax_ref_reached_twice_is_one_leaf():
    m = Block()
    m.ref = jax.new_ref(jnp.arange(3.0))
    m.items = [m.ref, {"again": m.ref}]
    graphdef, state = nnx.split(m)
    ref_paths = [p for p, v in state.flat_state() if isinstance(v, jax.Ref)]
    assert ref_paths == [("items", 0)]  # its first path in canonical order
    assert "<same Ref #0>" in repr(graphdef)
    new = nnx.merge(graphdef, state)
    assert new.ref is new.items[0] is new.items[1]["again"] is m.ref
    c = nnx.clone(m)
    assert c.ref is c.items[0] is c.items[1]["again"]

    @nnx.jit
    def bump(m):
        m.items[1]["again"][...] += 1.0  # the Ref is written through its second path
        return m.ref[...]

    np.testing.assert_allclose(bump(m), [1.0, 2.0, 3.0])
    np.testing.assert_allclose(m.ref[...], [1.0, 2.0, 3.0])
    assert m.ref is m.items[0] is m.items[1]["again"]
    np.testing.assert_allclose(bump(m), [2.0, 3.0, 4.0])


def test_cycles_roundtrip():
    m = Block()
    m.me = m
    m.linear.parent = m
    graphdef, state = nnx.split(m)
    new = nnx.merge(graphdef, state)
    assert new.me is new
    assert new.linear.parent is new
    c = nnx.clone(m)
    assert c.me is c and c is not m


def test_state_and_graphdef_functions():
    block = Block()
    assert nnx.graphdef(block) == nnx.split(block)[0]
    st = nnx.state(block)
    assert set(st) == {"linear", "mean"}
    params = nnx.state(block, nnx.Param)
    assert set(params["linear"]) == {"kernel", "bias"}
    params2, stats = nnx.state(block, nnx.Param, nnx.BatchStat)
    assert list(stats) == ["mean"]
    # non-exhaustive is fine for nnx.state
    only_stats = nnx.state(block, nnx.BatchStat)
    assert list(only_stats) == ["mean"]


def test_plain_lists_tuples_dicts_as_attributes():
    m = nnx.Module()
    m.layers = [Linear(2, 2, seed=i) for i in range(3)]
    m.arrays = (jnp.ones(2), jnp.zeros(3))
    m.table = {"a": Linear(2, 1), "b": jnp.arange(4.0), 3: nnx.Param(jnp.ones(1))}
    m.names = ["x", "y"]
    graphdef, state = nnx.split(m)
    assert set(state["layers"]) == {0, 1, 2}
    assert state["table"][3] is not None
    new = nnx.merge(graphdef, state)
    assert isinstance(new.layers, list) and len(new.layers) == 3
    assert isinstance(new.arrays, tuple)
    assert isinstance(new.table, dict) and set(new.table) == {"a", "b", 3}
    _eq(new.layers[2].kernel[...], m.layers[2].kernel[...])
    _eq(new.table["b"], jnp.arange(4.0))
    assert type(new.table[3]) is nnx.Param
    assert new.names == ["x", "y"]


def test_raw_jnp_arrays_as_attributes():
    m = nnx.Module()
    m.w = jnp.arange(6.0).reshape(2, 3)
    m.n = np.ones(2, np.int32)
    graphdef, state = nnx.split(m)
    assert state["w"].shape == (2, 3)
    new = nnx.merge(graphdef, state)
    _eq(new.w, m.w)
    _eq(new.n, m.n)


def test_namedtuple_attribute_is_a_pytree():
    Pair = collections.namedtuple("Pair", "a b")
    m = nnx.Module()
    m.pair = Pair(jnp.ones(2), nnx.Param(jnp.zeros(2)))
    graphdef, state = nnx.split(m)
    new = nnx.merge(graphdef, state)
    assert isinstance(new.pair, Pair)
    assert type(new.pair.b) is nnx.Param
    _eq(new.pair.a, jnp.ones(2))


def test_unhashable_static_values_split_merge_and_hash():
    # Flax accepts these (real transformer configs hold lists); they are
    # compared by value and hashed by contents.
    m = Block()
    m.linear.config = {"x": {1, 2}}
    graphdef, state = nnx.split(m)
    assert nnx.merge(graphdef, state).linear.config == {"x": {1, 2}}
    other = Block()
    other.linear.config = {"x": {1, 2}}
    assert hash(nnx.graphdef(other)) == hash(graphdef)
    assert nnx.graphdef(other) == graphdef
    other.linear.config = {"x": {1, 3}}
    assert nnx.graphdef(other) != graphdef


@dataclasses.dataclass(frozen=True)
class _Config:
    layers: list


def test_frozen_dataclass_config_with_list_field_splits_jits_and_merges():
    s = nnx.Module()
    s.config = _Config(layers=[1, 2])
    s.w = nnx.Param(jnp.ones(2))
    graphdef, state = nnx.split(s)
    new = nnx.merge(graphdef, state)
    assert new.config == _Config(layers=[1, 2])
    f = nnx.jit(lambda s: s.w * len(s.config.layers))
    _eq(f(s), jnp.full(2, 2.0))
    s.config = _Config(layers=[1, 2, 3])  # another value: another GraphDef
    _eq(f(s), jnp.full(2, 3.0))
    _eq(jax.jit(lambda st: nnx.merge(graphdef, st).w * 2)(state), jnp.full(2, 2.0))


def test_unhashable_variable_metadata_error_names_the_path():
    m = Block()
    m.linear.mask = nnx.Param(jnp.ones(2), mask=jnp.ones(2))
    graphdef, _ = nnx.split(m)  # hashing is lazy: the error comes when it is hashed
    with pytest.raises(TypeError, match=r"node\.linear\.mask has metadata mask=.*not hashable"):
        hash(graphdef)


# -- update -------------------------------------------------------------------
def test_update_writes_values_in_place():
    block = Block()
    kernel = block.linear.kernel
    _, state = nnx.split(block)
    new_state = jax.tree.map(lambda x: x + 1, state)
    nnx.update(block, new_state)
    assert block.linear.kernel is kernel  # same Variable object
    _eq(block.mean[...], jnp.ones(3))
    _eq(block.linear.bias[...], jnp.ones(3))


def test_update_with_pure_dict_and_partial_state():
    block = Block()
    nnx.update(block, {"mean": jnp.full(3, 2.0)})
    assert type(block.mean) is nnx.BatchStat
    _eq(block.mean[...], jnp.full(3, 2.0))


def test_update_adds_missing_attributes():
    block = Block()
    nnx.update(block, nnx.State({"extra": nnx.Cache(jnp.ones(2)), "raw": jnp.zeros(1)}))
    assert type(block.extra) is nnx.Cache
    _eq(block.extra[...], jnp.ones(2))
    _eq(block.raw, jnp.zeros(1))
    nnx.update(block, nnx.State({"linear": {"lora": nnx.Param(jnp.ones(4))}}))
    assert type(block.linear.lora) is nnx.Param


def test_update_missing_nested_node_errors():
    block = Block()
    with pytest.raises(ValueError, match=r"node\.nothere does not exist"):
        nnx.update(block, {"nothere": {"x": jnp.ones(1)}})


def test_update_rebuilds_tuples_and_lists():
    m = nnx.Module()
    m.t = (jnp.ones(2), jnp.zeros(2), "tag")
    m.lst = [jnp.ones(1), (jnp.ones(1), jnp.ones(1))]
    lst = m.lst
    nnx.update(m, nnx.State({"t": {1: jnp.full(2, 3.0)}, "lst": {1: {0: jnp.zeros(1)}}}))
    assert isinstance(m.t, tuple) and m.t[2] == "tag"
    _eq(m.t[1], jnp.full(2, 3.0))
    _eq(m.t[0], jnp.ones(2))
    assert m.lst is lst  # lists are updated in place
    _eq(m.lst[1][0], jnp.zeros(1))


def test_update_restores_after_merge_with_shared_refs():
    m = Block()
    m.tied = m.linear.kernel
    graphdef, state = nnx.split(m)
    nnx.update(m, jax.tree.map(jnp.zeros_like, state))
    assert m.tied is m.linear.kernel
    _eq(m.tied[...], jnp.zeros((2, 3)))


# -- pop -------------------------------------------------------------------------
def test_pop_removes_and_returns():
    block = Block()
    stats = nnx.pop(block, nnx.BatchStat)
    assert not hasattr(block, "mean")
    _eq(stats["mean"][...], jnp.zeros(3))
    assert "mean" not in nnx.state(block)
    params, nothing = nnx.pop(block, nnx.Param, nnx.Cache)
    assert set(params["linear"]) == {"bias", "kernel"}
    assert len(nothing) == 0
    assert not hasattr(block.linear, "kernel")


def test_pop_from_plain_list_and_dict_removes_entries_in_place():
    # As in Flax: plain lists and dicts lose the popped entries in place
    # (later list entries first, so indices do not shift under the loop).
    m = nnx.Module()
    m.vs = [nnx.Param(jnp.ones(1)), nnx.BatchStat(jnp.zeros(1)), nnx.Param(2 * jnp.ones(1))]
    m.d = {"a": nnx.Param(jnp.ones(2)), "b": jnp.zeros(3)}
    popped = nnx.pop(m, nnx.Param)
    assert [type(v) for v in m.vs] == [nnx.BatchStat]
    assert list(m.d) == ["b"]
    _eq(popped["vs"][2][...], 2 * jnp.ones(1))
    _eq(popped["d"]["a"][...], jnp.ones(2))


def test_pop_from_tuple_errors():
    m = nnx.Module()
    m.vs = (nnx.Param(jnp.ones(1)),)
    with pytest.raises(ValueError, match=r"pop: node\.vs\[0\] lives inside a container"):
        nnx.pop(m, nnx.Param)


# -- clone ---------------------------------------------------------------------------
def test_clone_is_deep_and_keeps_sharing():
    m = Block()
    m.twin = m.linear
    c = nnx.clone(m)
    assert c.twin is c.linear and c.linear is not m.linear
    c.linear.kernel[...] = jnp.zeros((2, 3))
    assert float(jnp.abs(m.linear.kernel[...]).sum()) > 0


# -- iteration -------------------------------------------------------------------------
def test_iter_graph_children_before_parents_and_shared_once():
    m = Block()
    m.twin = m.linear
    items = list(nnx.iter_graph(m))
    paths = [p for p, _ in items]
    assert paths[-1] == ()
    assert items[-1][1] is m
    assert paths.index(("linear", "kernel")) < paths.index(("linear",))
    assert ("twin",) not in paths  # shared module visited once
    assert (("rate",), 0.5) in items  # static leaves included
    modules = [v for _, v in items if isinstance(v, nnx.Module)]
    assert modules == [m.linear, m]


def test_iter_modules():
    m = Block()
    m.more = [Linear(1, 1)]
    found = list(nnx.iter_modules(m))
    assert [p for p, _ in found] == [("linear",), ("more", 0), ()]
    assert [p for p, _ in m.iter_modules()] == [p for p, _ in found]
    assert list(m.iter_children()) == [("linear", m.linear)]


def test_find_duplicates():
    m = Block()
    m.twin = m.linear
    m.tied = m.linear.bias
    dups = nnx.find_duplicates(m)
    as_sets = sorted(sorted(g) for g in dups)
    assert as_sets == [[("linear",), ("twin",)], [("linear", "bias"), ("tied",)]]
    assert nnx.find_duplicates(Block()) == []


def test_recursive_map_replaces_and_keeps_original():
    m = Block()
    m.twin = m.linear

    def f(path, value):
        if isinstance(value, Linear):
            new = Linear(2, 3, seed=9)
            new.tag = path
            return new
        return value

    out = nnx.recursive_map(f, m)
    assert isinstance(out.linear, Linear) and out.linear.tag == ("linear",)
    assert out.twin is out.linear  # sharing preserved
    assert not hasattr(m.linear, "tag")
    _eq(out.linear.kernel[...], Linear(2, 3, seed=9).kernel[...])


def test_recursive_map_on_variables():
    m = Block()
    out = nnx.recursive_map(lambda p, v: nnx.Param(v[...] * 0) if isinstance(v, nnx.Param) else v, m)
    _eq(out.linear.kernel[...], jnp.zeros((2, 3)))
    assert float(jnp.abs(m.linear.kernel[...]).sum()) > 0


def test_flatten_unflatten_low_level():
    m = Block()
    graphdef, pairs = nnx.flatten(m)
    assert graphdef.num_leaves == len(pairs) == 3
    assert [p for p, _ in pairs] == [("linear", "bias"), ("linear", "kernel"), ("mean",)]
    new = nnx.unflatten(graphdef, dict(pairs))
    _eq(new.mean[...], m.mean[...])
    # copy=False keeps the Variable objects (a view)
    view = nnx.unflatten(graphdef, dict(nnx.flatten(m, copy=False)[1]), copy=False)
    assert view.mean is m.mean and view is not m


def test_update_never_aliases_state_variables_into_the_model():
    m = nnx.Module()
    m.w = jnp.ones(2)  # a raw array replaced by a Variable
    state = nnx.State({"w": nnx.Param(jnp.zeros(2)), "new": nnx.Cache(jnp.ones(1))})
    nnx.update(m, state)
    assert type(m.w) is nnx.Param and m.w is not state["w"]
    assert m.new is not state["new"]
    m.w[...] = jnp.full(2, 5.0)
    _eq(state["w"][...], jnp.zeros(2))  # the State stays immutable


def test_iter_graph_allows_setattr_on_yielded_node():
    m = Block()
    m.other = Linear(2, 3, seed=4)
    replaced = []
    for path, node in nnx.iter_graph(m):
        if isinstance(node, nnx.Module):
            for name, value in vars(node).items():
                if isinstance(value, Linear):
                    setattr(node, name, nnx.Module())
                    replaced.append(path + (name,))
    assert sorted(replaced) == [("linear",), ("other",)]
    assert type(m.linear) is nnx.Module and type(m.other) is nnx.Module


def test_update_with_a_tuple_root():
    import optax

    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    state = jax.tree.map(lambda x: x, nnx.state((model, optimizer)))  # new Variables, same values
    kernel = np.asarray(model.kernel.value)
    zeroed = jax.tree.map(lambda x: x * 0, state)
    nnx.update((model, optimizer), zeroed)
    _eq(model.kernel.value, np.zeros_like(kernel))
    nnx.update((model, optimizer), state)  # the first state still holds the old values
    _eq(model.kernel.value, kernel)
    assert nnx.state((model, optimizer))[0]["kernel"][...].shape == (2, 3)


def test_update_of_a_plain_value_directly_in_a_tuple_names_the_fix():
    root = (nnx.Linear(2, 3, rngs=nnx.Rngs(0)), jnp.ones(2))
    state = jax.tree.map(lambda x: x + 1, nnx.state(root))
    kernel = root[0].kernel.value
    with pytest.raises(ValueError, match=r"\[1\] sits directly in a tuple.*list instead"):
        nnx.update(root, state)
    assert root[0].kernel.value is kernel  # nothing half-applied


def test_graphdef_is_a_static_pytree_for_plain_jax_jit():
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    assert jax.tree.leaves(graphdef) == []

    @jax.jit
    def forward(graphdef, state, x):
        return nnx.merge(graphdef, state)(x)

    _eq(forward(graphdef, state, jnp.ones(2)), model(jnp.ones(2)))
    other = jax.tree.map(lambda x: x, graphdef)
    assert other is graphdef or other == graphdef


class _Link(nnx.Module):
    def __init__(self, nxt):
        self.w = nnx.Param(jnp.ones(1))
        self.next = nxt


def test_graphs_deeper_than_the_recursion_limit():
    import sys

    depth = max(3000, sys.getrecursionlimit() + 500)
    chain = None
    for _ in range(depth):
        chain = _Link(chain)
    graphdef, state = nnx.split(chain)
    assert len(state.flat_state()) == depth
    assert graphdef == nnx.graphdef(chain) and hash(graphdef) == hash(nnx.graphdef(chain))
    copy = nnx.merge(graphdef, state)
    node, n = copy, 0
    while node is not None:
        n += 1
        node = node.next
    assert n == depth
    doubled = nnx.jit(lambda m: m.w * 2)(chain)
    _eq(doubled, jnp.full(1, 2.0))
    g2, params, rest = nnx.split(chain, nnx.Param, ...)
    assert len(params.flat_state()) == depth


# -- the one writer: update and the transforms' commit -----------------------------
def test_update_through_the_second_path_of_a_shared_variable_keeps_the_sharing():
    m = Block()
    m.tied = m.linear.kernel
    kernel = m.linear.kernel
    nnx.update(m, {"tied": jnp.full((2, 3), 4.0)})  # `split` lists it under linear.kernel
    assert m.tied is kernel and m.linear.kernel is kernel
    _eq(kernel[...], jnp.full((2, 3), 4.0))


def test_update_keeps_untouched_containers_and_the_jit_cache():
    m = Block()
    m.t = (jnp.ones(2), "tag")
    m.cfg = {"scale": jnp.ones(1)}
    t, cfg = m.t, m.cfg
    traces = []

    @nnx.jit
    def f(m):
        traces.append(1)
        return m.mean[...] + m.t[0].sum()

    f(m)
    nnx.update(m, {"mean": jnp.full(3, 2.0, jnp.float32)})
    assert m.t is t and m.cfg is cfg
    _eq(f(m), jnp.full(3, 4.0))
    assert len(traces) == 1  # a value write is not a structural change
    nnx.update(m, {"cfg": {"scale": jnp.zeros(1)}})
    assert m.cfg is cfg and float(cfg["scale"][0]) == 0.0  # a dict is edited in place


def test_update_checks_every_path_before_writing():
    m = Block()
    before = m.mean[...]
    with pytest.raises(ValueError, match=r"node\.nothere does not exist"):
        nnx.update(m, {"mean": jnp.full(3, 9.0), "nothere": {"x": jnp.ones(1)}})
    _eq(m.mean[...], before)


def test_update_with_another_variable_type_writes_its_value():
    m = Block()
    nnx.update(m, nnx.State({"mean": nnx.Param(jnp.full(3, 3.0))}))
    assert type(m.mean) is nnx.BatchStat
    _eq(m.mean[...], jnp.full(3, 3.0))


def test_structural_commit_keeps_unchanged_containers():
    m = Block()
    m.t = (nnx.Param(jnp.ones(2)), "tag")
    m.items = [nnx.BatchStat(jnp.zeros(1))]
    t, items = m.t, m.items

    @nnx.jit
    def grow(m):
        m.extra = nnx.Param(jnp.ones(1))  # a new attribute: the commit rebuilds by structure
        m.mean[...] = m.mean[...] + 1

    grow(m)
    assert type(m.extra) is nnx.Param
    _eq(m.mean[...], jnp.ones(3))
    assert m.t is t and m.items is items  # same Variables in them: the caller's objects stay
