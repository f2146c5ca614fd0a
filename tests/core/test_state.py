"""State: an immutable nested mapping that is a JAX pytree."""

import copy
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxfn as nnx


class Model(nnx.Module):
    def __init__(self):
        self.linear = nnx.Module()
        self.linear.kernel = nnx.Param(jnp.ones((2, 3)))
        self.linear.bias = nnx.Param(jnp.zeros((3,)))
        self.mean = nnx.BatchStat(jnp.full((3,), 0.5))
        self.layers = [nnx.Param(jnp.ones(1)), nnx.Param(jnp.ones(2))]


def _eq(a, b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_item_and_attribute_access():
    state = nnx.state(Model())
    assert isinstance(state["linear"], nnx.State)
    assert state["linear"]["kernel"].shape == (2, 3)
    assert state.linear.kernel is state["linear"]["kernel"]
    assert type(state.mean) is nnx.BatchStat
    assert state["layers"][1].shape == (2,)
    assert "linear" in state and "nope" not in state
    assert len(state) == 3
    with pytest.raises(AttributeError, match="State has no key 'nope'"):
        state.nope
    with pytest.raises(KeyError):
        state["nope"]


def test_flat_state_and_flat_dict():
    state = nnx.state(Model())
    flat = state.flat_state()
    assert [p for p, _ in flat] == [
        ("layers", 0),
        ("layers", 1),
        ("linear", "bias"),
        ("linear", "kernel"),
        ("mean",),
    ]
    assert all(isinstance(v, nnx.Variable) for _, v in flat)
    assert state.flat_dict()[("mean",)] is state.mean
    assert nnx.State.from_flat_path(flat).flat_dict() == state.flat_dict()
    assert len(state.leaves()) == 5


def test_mixed_int_and_str_keys_ordered_canonically():
    state = nnx.State({"b": 1.0, 2: 2.0, "a": 3.0, 0: 4.0, 10: 5.0})
    assert [p for p, _ in state.flat_state()] == [(0,), (2,), (10,), ("a",), ("b",)]
    assert jax.tree.leaves(state) == [4.0, 2.0, 5.0, 3.0, 1.0]
    paths = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
    assert paths == ["[0]", "[2]", "[10]", "['a']", "['b']"]


def test_to_pure_dict():
    state = nnx.state(Model())
    pure = state.to_pure_dict()
    assert type(pure) is dict and type(pure["linear"]) is dict
    assert isinstance(pure["mean"], jax.Array)
    _eq(pure["mean"], jnp.full((3,), 0.5))
    assert set(pure["layers"]) == {0, 1}


def test_replace_by_pure_dict_returns_new_state():
    state = nnx.state(Model())
    pure = state.to_pure_dict()
    pure["mean"] = jnp.full((3,), 9.0)
    new = state.replace_by_pure_dict(pure)
    assert new is not state
    assert type(new.mean) is nnx.BatchStat
    _eq(new.mean[...], jnp.full((3,), 9.0))
    _eq(state.mean[...], jnp.full((3,), 0.5))  # original unchanged


def test_replace_by_pure_dict_partial_str_int_keys_and_replace_fn():
    state = nnx.state(Model())
    new = state.replace_by_pure_dict({"layers": {"1": jnp.zeros(2)}})  # JSON-style key
    _eq(new["layers"][1][...], jnp.zeros(2))
    _eq(new["layers"][0][...], jnp.ones(1))
    doubled = state.replace_by_pure_dict({"mean": 2.0}, replace_fn=lambda old, v: old.replace(old[...] * v))
    _eq(doubled.mean[...], jnp.full((3,), 1.0))


def test_replace_by_pure_dict_unknown_key_errors():
    state = nnx.state(Model())
    with pytest.raises(KeyError, match=r"state\.linear\.weight is not in the state"):
        state.replace_by_pure_dict({"linear": {"weight": jnp.ones(1)}})


def test_filter_and_split():
    state = nnx.state(Model())
    params = state.filter(nnx.Param)
    assert set(params) == {"linear", "layers"}
    params2, stats = state.filter(nnx.Param, nnx.BatchStat)
    assert list(stats) == ["mean"]
    p, rest = state.split(nnx.Param, ...)
    assert list(rest) == ["mean"]
    with pytest.raises(ValueError, match=r"node\.mean matched none of the filters"):
        state.split(nnx.Param)
    assert nnx.split_state(state) is state
    assert nnx.filter_state(state, nnx.BatchStat).flat_dict() == stats.flat_dict()


def test_merge_and_or():
    state = nnx.state(Model())
    params, rest = state.split(nnx.Param, ...)
    merged = nnx.State.merge(params, rest)
    assert merged.flat_dict() == state.flat_dict()
    assert (params | rest).flat_dict() == state.flat_dict()
    assert nnx.merge_state(rest, params).flat_dict() == state.flat_dict()
    override = nnx.State({"mean": jnp.zeros(3)})
    _eq((state | override)["mean"], jnp.zeros(3))
    # later states win
    assert (override | state)["mean"] is state["mean"]


def test_repr_shows_shapes_not_values():
    state = nnx.state(Model())
    text = repr(state)
    assert "Param(value=Array(shape=(2, 3), dtype=float32))" in text
    assert "BatchStat(value=Array(shape=(3,), dtype=float32))" in text
    assert "0.5" not in text
    assert text.index("'layers'") < text.index("'linear'") < text.index("'mean'")
    assert repr(nnx.State({})) == "State({})"


def test_immutability_errors():
    state = nnx.state(Model())
    with pytest.raises(TypeError, match="State is immutable, cannot set 'mean'"):
        state["mean"] = jnp.zeros(3)
    with pytest.raises(TypeError, match="State is immutable, cannot set 'mean'.*nnx.update"):
        state.mean = jnp.zeros(3)
    with pytest.raises(TypeError, match="State is immutable"):
        del state["mean"]


def test_states_compare_as_mappings():
    nested = nnx.State({"a": 1, "b": {"c": 2}})
    assert nested == {"a": 1, "b": {"c": 2}} and {"a": 1, "b": {"c": 2}} == nested
    assert nested == nnx.State({"b": nnx.State({"c": 2}), "a": 1})
    assert nested != {"a": 1, "b": {"c": 3}} and nested != {"a": 1}
    assert nnx.State({}) == {} and nnx.state({}) == nnx.State({})
    assert nested != [("a", 1)]  # not a Mapping
    with pytest.raises(TypeError, match="unhashable"):
        hash(nested)
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    params, rest = nnx.state(model, nnx.Param, ...)
    assert rest == {} and params != {}
    assert nnx.statelib.diff(nnx.state(model), params) == nnx.State({})


def test_state_is_a_pytree_tree_map():
    state = nnx.state(Model())
    doubled = jax.tree.map(lambda x: x * 2, state)
    assert isinstance(doubled, nnx.State)
    assert type(doubled.linear.kernel) is nnx.Param
    _eq(doubled.mean[...], jnp.full((3,), 1.0))
    assert len(jax.tree.leaves(state)) == 5
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(state))


def test_state_jit_roundtrip():
    state = nnx.state(Model())

    @jax.jit
    def f(s):
        return jax.tree.map(lambda x: x + 1, s)

    out = f(state)
    assert isinstance(out, nnx.State)
    assert type(out.mean) is nnx.BatchStat
    _eq(out.linear.kernel[...], jnp.full((2, 3), 2.0))
    assert jax.tree.structure(out) == jax.tree.structure(state)
    same = jax.jit(lambda s: s)(state)
    assert same.flat_dict().keys() == state.flat_dict().keys()


def test_state_with_optax_style_grad():
    state = nnx.State({"w": jnp.ones(3), "v": {"b": jnp.full(2, 2.0)}})
    grads = jax.grad(lambda s: (s["w"] ** 2).sum() + s["v"]["b"].sum())(state)
    assert isinstance(grads, nnx.State)
    _eq(grads["w"], jnp.full(3, 2.0))
    _eq(grads["v"]["b"], jnp.ones(2))


def test_nested_plain_dicts_become_states():
    state = nnx.State({"a": {"b": {"c": jnp.ones(1)}}})
    assert isinstance(state["a"]["b"], nnx.State)
    assert state.flat_state()[0][0] == ("a", "b", "c")


def test_pickle_and_copy():
    state = nnx.state(Model())
    for other in (pickle.loads(pickle.dumps(state)), copy.deepcopy(state)):
        assert isinstance(other, nnx.State)
        assert type(other.mean) is nnx.BatchStat
        _eq(other.linear.kernel[...], jnp.ones((2, 3)))
