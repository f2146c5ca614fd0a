"""FlatState and the free state helpers (core/flatstate.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxfn as nnx


def _state():
    return nnx.State(
        {
            "b": {"w": nnx.Param(jnp.ones(2)), "n": nnx.BatchStat(jnp.zeros(1))},
            "a": nnx.Param(jnp.array(3.0)),
            "layers": {0: {"k": nnx.Param(jnp.ones(1))}, 1: {"k": nnx.Param(2 * jnp.ones(1))}},
        }
    )


def test_to_flat_state_is_sorted_and_round_trips():
    flat = nnx.to_flat_state(_state())
    assert isinstance(flat, nnx.FlatState)
    assert flat.paths == (("a",), ("b", "n"), ("b", "w"), ("layers", 0, "k"), ("layers", 1, "k"))
    assert flat[0][0] == ("a",) and float(flat[0][1][...]) == 3.0
    assert len(flat[1:3]) == 2 and isinstance(flat[1:3], nnx.FlatState)
    back = nnx.from_flat_state(flat)
    assert float(back["layers"][1]["k"][...][0]) == 2.0
    assert nnx.from_flat_state({("x", "y"): 1})["x"]["y"] == 1


def test_flat_state_split_filter_merge_and_pytree():
    flat = nnx.to_flat_state(_state())
    params, stats = flat.split(nnx.Param, nnx.BatchStat)
    assert len(params) == 4 and stats.paths == (("b", "n"),)
    with pytest.raises(ValueError):
        flat.split(nnx.Param)
    only = flat.filter(nnx.BatchStat)
    assert only.paths == (("b", "n"),)
    merged = nnx.FlatState.merge(params, stats)
    assert merged.paths == flat.paths
    doubled = jax.tree.map(lambda x: x * 2, flat)
    assert isinstance(doubled, nnx.FlatState) and float(doubled[0][1][...]) == 6.0


def test_to_pure_dict_and_extract_fn():
    pure = nnx.to_pure_dict(_state())
    assert isinstance(pure["a"], jax.Array) and float(pure["a"]) == 3.0
    assert set(pure["layers"]) == {0, 1}
    shapes = nnx.to_pure_dict(_state(), extract_fn=lambda v: v[...].shape)
    assert shapes["b"]["w"] == (2,)


def test_replace_by_pure_dict_updates_the_variables_and_returns_the_state():
    state = _state()
    kernel = state["layers"][0]["k"]
    pure = nnx.to_pure_dict(state)
    pure = jax.tree.map(jnp.zeros_like, pure)
    pure["layers"] = {"0": pure["layers"][0], "1": pure["layers"][1]}  # checkpoint-style keys
    new = nnx.replace_by_pure_dict(state, pure)
    assert isinstance(new, nnx.State) and type(new["a"]) is nnx.Param
    assert float(new["a"][...]) == 0.0
    # Flax's pattern that ignores the return value also works: the Variables changed
    assert float(state["a"][...]) == 0.0 and float(kernel[...][0]) == 0.0
    with pytest.raises(KeyError):
        nnx.replace_by_pure_dict(state, {"nope": 1})


def test_replace_by_pure_dict_then_update_model():
    model = nnx.Linear(4, 5, rngs=nnx.Rngs(0))
    state = nnx.state(model)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.zeros_like, nnx.to_pure_dict(state)))
    nnx.update(model, state)
    np.testing.assert_array_equal(model(jnp.ones((3, 4))), jnp.zeros((3, 5)))


def test_map_state_restore_int_paths_and_diff():
    state = _state()
    mapped = nnx.map_state(lambda p, v: len(p), state)
    assert mapped["a"] == 1 and mapped["layers"][0]["k"] == 3
    assert nnx.restore_int_paths({"layers": {"0": 1, "x": 2}}) == {"layers": {0: 1, "x": 2}}
    small = nnx.State({"a": 1})
    big = nnx.State({"a": 1, "b": {"c": 2}})
    assert nnx.statelib.diff(big, small).flat_dict() == {("b", "c"): 2}
    assert len(nnx.statelib.diff(small, big)) == 0
    assert nnx.statelib.diff(small, nnx.State({})) is small
