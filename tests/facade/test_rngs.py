"""Rngs: named streams whose keys and counters are state."""

import copy
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxfn as nnx


def kd(key):
    return np.asarray(jax.random.key_data(key))


def same(a, b):
    return np.array_equal(kd(a), kd(b))


def test_default_stream_and_counter():
    rngs = nnx.Rngs(0)
    k1, k2 = rngs(), rngs()
    assert not same(k1, k2)
    assert int(rngs.default.count[...]) == 2
    base = jax.random.key(0)
    assert same(k1, jax.random.fold_in(base, 0))
    assert same(k2, jax.random.fold_in(base, 1))
    assert jax.dtypes.issubdtype(k1.dtype, jax.dtypes.prng_key)


def test_default_call_forms_agree():
    x, y = nnx.Rngs(3), nnx.Rngs(3)
    assert same(x(), y.default())
    assert same(x(), y["default"]())


def test_named_streams_are_independent():
    rngs = nnx.Rngs(params=0, dropout=1)
    p = rngs.params()
    d = rngs.dropout()
    assert not same(p, d)
    assert same(p, jax.random.fold_in(jax.random.key(0), 0))
    assert same(d, jax.random.fold_in(jax.random.key(1), 0))
    assert int(rngs.params.count[...]) == 1 and int(rngs.dropout.count[...]) == 1
    assert "params" in rngs and "dropout" in rngs and "default" not in rngs
    assert sorted(rngs.streams()) == ["dropout", "params"]
    assert [n for n, _ in rngs.items()] == ["params", "dropout"]


def test_fallback_to_default():
    rngs = nnx.Rngs(0, dropout=5)
    k = rngs.params()  # no 'params' stream: drawn from 'default'
    assert same(k, jax.random.fold_in(jax.random.key(0), 0))
    assert int(rngs.default.count[...]) == 1
    assert same(rngs["noise"](), jax.random.fold_in(jax.random.key(0), 1))
    assert same(rngs.dropout(), jax.random.fold_in(jax.random.key(5), 0))


def test_error_without_default():
    rngs = nnx.Rngs(params=0)
    with pytest.raises(AttributeError, match=r"no stream 'dropout' and no 'default'.*nnx\.Rngs\(dropout=seed\)"):
        rngs.dropout()
    with pytest.raises(AttributeError, match="no stream 'default'"):
        rngs()
    with pytest.raises(TypeError, match="Rngs needs a seed"):
        nnx.Rngs()


def test_seed_forms():
    a = nnx.Rngs(jax.random.key(7))
    b = nnx.Rngs(7)
    c = nnx.Rngs(jax.random.PRNGKey(7))  # raw uint32 key
    d = nnx.Rngs(jnp.array(7))
    ka, kb, kc, kd_ = a(), b(), c(), d()
    assert same(ka, kb) and same(kb, kc) and same(kc, kd_)
    with pytest.raises(TypeError, match="cannot use a float32 array"):
        nnx.Rngs(jnp.ones(3))


def test_keys_and_counts_are_state():
    rngs = nnx.Rngs(0, dropout=1)
    keys = nnx.state(rngs, nnx.RngKey)
    counts = nnx.state(rngs, nnx.RngCount)
    both = nnx.state(rngs, nnx.RngState)
    assert {p for p, _ in keys.flat_state()} == {("default", "key"), ("dropout", "key")}
    assert {p for p, _ in counts.flat_state()} == {("default", "count"), ("dropout", "count")}
    assert len(both.flat_state()) == 4
    assert counts["default"]["count"].dtype == jnp.uint32


def test_counter_restored_by_update_replays_keys():
    rngs = nnx.Rngs(0)
    saved = nnx.state(rngs, nnx.RngCount)
    k1 = rngs()
    rngs()
    nnx.update(rngs, saved)
    assert int(rngs.default.count[...]) == 0
    assert same(rngs(), k1)


def test_rngs_split_merge_roundtrip_and_jit():
    rngs = nnx.Rngs(0, dropout=1)
    rngs()
    g, state = nnx.split(rngs)
    new = nnx.merge(g, state)
    assert type(new) is nnx.Rngs and type(new.default) is nnx.RngStream
    assert int(new.default.count[...]) == 1
    assert same(new(), rngs())

    @jax.jit
    def draw(state):
        r = nnx.merge(g, state)
        key = r.dropout()
        return key, nnx.state(r)

    key, after = draw(state)
    assert same(key, jax.random.fold_in(jax.random.key(1), 0))
    assert int(after["dropout"]["count"][...]) == 1


def test_rngs_in_module_filter_by_tag():
    class M(nnx.Module):
        def __init__(self, rngs):
            self.rngs = rngs
            self.w = nnx.Param(jax.random.normal(rngs.params(), (2,)))

    m = M(nnx.Rngs(0, dropout=1))
    dropout_state = nnx.state(m, "dropout")
    assert {p for p, _ in dropout_state.flat_state()} == {
        ("rngs", "dropout", "count"), ("rngs", "dropout", "key")
    }
    _, params, rng_state = nnx.split(m, nnx.Param, nnx.RngState)
    assert list(params) == ["w"]


def test_fork():
    rngs = nnx.Rngs(0, dropout=1)
    forked = rngs.fork()
    assert type(forked) is nnx.Rngs and sorted(forked.streams()) == ["default", "dropout"]
    assert int(rngs.default.count[...]) == 1  # forking draws one key per stream
    assert int(forked.default.count[...]) == 0
    a, b = forked(), rngs()
    assert not same(a, b)
    again = nnx.Rngs(0, dropout=1).fork()
    assert same(again(), a)  # deterministic


def test_fork_with_split():
    rngs = nnx.Rngs(0)
    forked = rngs.fork(split=4)
    keys = forked.default.key[...]
    assert keys.shape == (4,)
    data = kd(keys)
    assert len({tuple(r) for r in data}) == 4
    stream = nnx.Rngs(0).default.fork(split=(2, 3))
    assert stream.key[...].shape == (2, 3)


def test_reseed():
    class M(nnx.Module):
        def __init__(self):
            self.rngs = nnx.Rngs(0, dropout=1)
            self.sub = nnx.Module()
            self.sub.rngs = nnx.Rngs(dropout=2)

    m = M()
    m.rngs.dropout()
    m.sub.rngs.dropout()
    default_before = m.rngs.default.key[...]
    nnx.reseed(m, dropout=10)
    assert int(m.rngs.dropout.count[...]) == 0 and int(m.sub.rngs.dropout.count[...]) == 0
    expected = jax.random.fold_in(jax.random.key(10), 0)
    assert same(m.rngs.dropout(), expected)
    assert same(m.sub.rngs.dropout(), expected)
    assert same(m.rngs.default.key[...], default_before)  # other streams untouched


def test_keys_differ_across_many_calls():
    rngs = nnx.Rngs(0)
    keys = {tuple(kd(rngs()).tolist()) for _ in range(50)}
    assert len(keys) == 50


def test_rngs_copy_and_pickle():
    rngs = nnx.Rngs(0)
    rngs()
    expected = jax.random.fold_in(jax.random.key(0), 1)
    for other in (copy.deepcopy(rngs), nnx.clone(rngs)):
        assert int(other.default.count[...]) == 1
        assert same(other(), expected)
        assert int(other.default.count[...]) == 2
    assert int(rngs.default.count[...]) == 1  # copies advance independently
    back = pickle.loads(pickle.dumps(rngs))
    k1, k2 = back(), rngs()
    assert same(k1, k2)


def test_rngs_repr():
    text = repr(nnx.Rngs(0, dropout=1))
    assert text.startswith("Rngs(") and "dropout=RngStream(" in text
    assert "key<fry>" in text
