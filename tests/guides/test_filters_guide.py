"""The behaviour shown in Flax's `guides/filters_guide`, run with `import nnxfn as nnx`."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

import nnxfn as nnx


class Foo(nnx.Module):
    def __init__(self):
        self.a = nnx.Param(0)
        self.b = nnx.BatchStat(True)


class SpecialParam(nnx.Param):
    pass


class Bar(nnx.Module):
    def __init__(self):
        self.a = nnx.Param(0)
        self.b = SpecialParam(0)


def test_split_by_variable_type():
    graphdef, params, batch_stats = nnx.split(Foo(), nnx.Param, nnx.BatchStat)
    assert set(params.keys()) == {"a"} and set(batch_stats.keys()) == {"b"}
    assert params["a"].get_value() == 0 and batch_stats["b"].get_value() is True


def test_filters_as_predicates():
    def is_param(path, value) -> bool:
        return isinstance(value, nnx.Param)

    assert is_param((), nnx.Param(0))
    assert nnx.OfType(nnx.Param)((), nnx.Param(0))
    assert not nnx.OfType(nnx.Param)((), nnx.BatchStat(0))


def test_to_predicate():
    is_param = nnx.filterlib.to_predicate(nnx.Param)
    everything = nnx.filterlib.to_predicate(...)
    nothing = nnx.filterlib.to_predicate(False)
    params_or_dropout = nnx.filterlib.to_predicate((nnx.Param, "dropout"))
    assert is_param((), nnx.Param(0)) and not is_param((), nnx.BatchStat(0))
    assert everything(("x",), 1) and not nothing(("x",), nnx.Param(0))
    assert params_or_dropout((), nnx.Param(0))
    assert params_or_dropout((), nnx.Rngs(dropout=0).dropout.count)  # tagged 'dropout'
    assert not params_or_dropout((), nnx.Rngs(noise=0).noise.count)
    assert not params_or_dropout(("other",), nnx.BatchStat(0))


def test_state_axes_with_a_tuple_filter_under_vmap():
    class Model(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.arange(3.0))
            self.s = nnx.BatchStat(jnp.array(1.0))

    state_axes = nnx.StateAxes({(nnx.Param, "dropout"): 0, ...: None})

    @nnx.vmap(in_axes=(state_axes, 0))
    def forward(model, x):
        return model.w * x + model.s

    y = forward(Model(), jnp.array([10.0, 20.0, 30.0]))
    assert jnp.allclose(y, jnp.array([1.0, 21.0, 61.0]))


KeyPath = tuple[Any, ...]


def split(node, *filters):
    """The guide's hand-written split: the first matching filter wins."""
    graphdef, state = nnx.graph.flatten(node)
    predicates = [nnx.filterlib.to_predicate(f) for f in filters]
    flat_states: list[dict[KeyPath, Any]] = [{} for _ in predicates]
    for path, value in state:
        for i, predicate in enumerate(predicates):
            if predicate(path, value):
                flat_states[i][path] = value
                break
        else:
            raise ValueError(f"No filter matched {path = } {value = }")
    states = tuple(nnx.State.from_flat_path(flat_state) for flat_state in flat_states)
    return graphdef, *states


def test_hand_written_split_and_filter_order():
    graphdef, params, batch_stats = split(Foo(), nnx.Param, nnx.BatchStat)
    assert set(params.keys()) == {"a"} and set(batch_stats.keys()) == {"b"}

    bar = Bar()
    _, params, special_params = split(bar, nnx.Param, SpecialParam)  # wrong order
    assert set(params.keys()) == {"a", "b"} and len(special_params.keys()) == 0
    _, special_params, params = split(bar, SpecialParam, nnx.Param)  # right order
    assert set(params.keys()) == {"a"} and set(special_params.keys()) == {"b"}
    # nnx.split applies the same first-match rule
    _, p, sp = nnx.split(bar, SpecialParam, nnx.Param)
    assert set(p.keys()) == {"b"} and set(sp.keys()) == {"a"}
