"""Filters: every accepted form, and the errors."""

import jax.numpy as jnp
import pytest

import nnxfn as nnx
from nnxfn.core.filters import to_predicate


class Custom(nnx.Param):
    pass


class Model(nnx.Module):
    def __init__(self):
        self.enc = nnx.Module()
        self.enc.kernel = nnx.Param(jnp.ones(2))
        self.enc.mean = nnx.BatchStat(jnp.zeros(2), tag="stats")
        self.dec = nnx.Module()
        self.dec.kernel = Custom(jnp.ones(3))
        self.dec.cache = nnx.Cache(jnp.zeros(1), tag="kv")
        self.raw = jnp.arange(2.0)


ALL_PATHS = [
    ("dec", "cache"),
    ("dec", "kernel"),
    ("enc", "kernel"),
    ("enc", "mean"),
    ("raw",),
]


def _paths(*filters):
    state = nnx.state(Model(), *filters)
    return [p for p, _ in state.flat_state()]


def test_type_filter_includes_subclasses():
    assert _paths(nnx.Param) == [("dec", "kernel"), ("enc", "kernel")]
    assert _paths(Custom) == [("dec", "kernel")]
    assert _paths(nnx.Variable) == ALL_PATHS[:4]


def test_oftype_filter():
    assert _paths(nnx.OfType(nnx.BatchStat)) == [("enc", "mean")]
    assert nnx.OfType(nnx.Param) == nnx.OfType(nnx.Param)  # hashable value object
    assert hash(nnx.OfType(nnx.Param)) == hash(nnx.OfType(nnx.Param))


def test_tag_string_and_withtag():
    assert _paths("stats") == [("enc", "mean")]
    assert _paths(nnx.WithTag("kv")) == [("dec", "cache")]
    assert _paths("nonexistent") == []


def test_path_contains_and_path_in():
    assert _paths(nnx.PathContains("kernel")) == [("dec", "kernel"), ("enc", "kernel")]
    assert _paths(nnx.PathContains("enc")) == [("enc", "kernel"), ("enc", "mean")]
    assert _paths(nnx.PathIn(("raw",), ["dec", "cache"])) == [("dec", "cache"), ("raw",)]


def test_all_any_not():
    assert _paths(nnx.All(nnx.Param, nnx.PathContains("enc"))) == [("enc", "kernel")]
    assert _paths(nnx.Any(nnx.BatchStat, nnx.Cache)) == [("dec", "cache"), ("enc", "mean")]
    assert _paths(nnx.Not(nnx.Variable)) == [("raw",)]
    assert _paths(nnx.Not(nnx.Any(nnx.Param, "kv"))) == [("enc", "mean"), ("raw",)]
    assert "Not(" in repr(nnx.Not(nnx.Param)) and "All(" in repr(nnx.All(nnx.Param))


def test_everything_nothing_ellipsis_true_false():
    assert _paths(nnx.Everything()) == ALL_PATHS
    assert _paths(...) == ALL_PATHS
    assert _paths(True) == ALL_PATHS
    assert _paths(nnx.Nothing()) == []
    assert _paths(False) == []
    assert _paths(None) == []


def test_tuple_and_list_mean_any():
    assert _paths((nnx.BatchStat, "kv")) == [("dec", "cache"), ("enc", "mean")]
    assert _paths([nnx.Cache, nnx.PathIn(("raw",))]) == [("dec", "cache"), ("raw",)]


def test_callable_filter():
    seen = []

    def only_size_2(path, value):
        seen.append(path)
        return getattr(value, "shape", None) == (2,)

    assert _paths(only_size_2) == [("enc", "kernel"), ("enc", "mean"), ("raw",)]
    assert sorted(seen) == ALL_PATHS


def test_first_matching_filter_wins():
    _, first, second, rest = nnx.split(Model(), nnx.Param, nnx.Variable, ...)
    assert [p for p, _ in first.flat_state()] == [("dec", "kernel"), ("enc", "kernel")]
    assert [p for p, _ in second.flat_state()] == [("dec", "cache"), ("enc", "mean")]
    assert [p for p, _ in rest.flat_state()] == [("raw",)]


def test_ellipsis_must_be_last():
    with pytest.raises(ValueError, match=r"`\.\.\.` must be the last filter.*position 1 of 2"):
        nnx.split(Model(), ..., nnx.Param)
    with pytest.raises(ValueError, match="must be the last filter"):
        nnx.state(Model()).split(nnx.Cache, ..., nnx.Param)
    # Flax's wording is part of the message (tests match on it); True counts too.
    with pytest.raises(ValueError, match=r"`\.\.\.` or `True` can only be used as the last filters"):
        nnx.split(Model(), True, nnx.Param)


def test_non_exhaustive_split_names_the_path():
    with pytest.raises(ValueError, match=r"split: node\.raw matched none of the filters.*`\.\.\.`"):
        nnx.split(Model(), nnx.Variable)
    with pytest.raises(ValueError, match=r"node\.enc\.mean, node\.raw matched none"):
        nnx.split(Model(), nnx.Param, nnx.Cache)
    with pytest.raises(ValueError, match="Non-exhaustive filters, got a non-empty remainder"):
        nnx.split(Model(), nnx.Param)


def test_bad_filter_errors():
    with pytest.raises(TypeError, match="3 is not a filter"):
        nnx.split(Model(), 3)
    with pytest.raises(TypeError, match="is not a filter"):
        to_predicate(4.5)


def test_filters_on_rng_variables():
    rngs = nnx.Rngs(0, dropout=1)
    assert {p for p, _ in nnx.state(rngs, nnx.RngKey).flat_state()} == {
        ("default", "key"),
        ("dropout", "key"),
    }
    assert {p for p, _ in nnx.state(rngs, "dropout").flat_state()} == {
        ("dropout", "count"),
        ("dropout", "key"),
    }
    assert len(nnx.state(rngs, nnx.RngState).flat_state()) == 4
