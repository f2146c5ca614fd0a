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
    with pytest.raises(
        AttributeError, match=r"No RngStream named 'dropout'.*no 'default'.*nnx\.Rngs\(dropout=seed\)"
    ):
        rngs.dropout()
    with pytest.raises(AttributeError, match="No RngStream named 'default'"):
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
    saved = jax.tree.map(lambda x: x, nnx.state(rngs, nnx.RngCount))  # a snapshot: new Variables
    k1 = rngs()
    rngs()
    nnx.update(rngs, saved)
    assert int(rngs.default.count[...]) == 0
    assert same(rngs(), k1)


def test_rngs_split_merge_roundtrip_and_jit():
    rngs = nnx.Rngs(0, dropout=1)
    rngs()
    g, state = nnx.split(rngs)
    new = nnx.merge(g, state, copy=True)  # its own counters
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
        ("rngs", "dropout", "count"),
        ("rngs", "dropout", "key"),
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
    # As in Flax: the new keys are drawn from `nnx.Rngs(dropout=10)`, one per
    # matching stream in graph order, and counts restart at 0.
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
    base = jax.random.key(10)
    assert same(m.rngs.dropout.key[...], jax.random.fold_in(base, 0))
    assert same(m.sub.rngs.dropout.key[...], jax.random.fold_in(base, 1))
    assert same(m.rngs.dropout(), jax.random.fold_in(jax.random.fold_in(base, 0), 0))
    assert same(m.rngs.default.key[...], default_before)  # other streams untouched


def test_reseed_repeats_dropout_masks():
    class Model(nnx.Module):
        def __init__(self, rngs):
            self.linear = nnx.Linear(4, 16, rngs=rngs)
            self.dropout = nnx.Dropout(0.5, rngs=rngs)

        def __call__(self, x):
            return self.dropout(self.linear(x))

    model = Model(nnx.Rngs(params=0, dropout=1))
    x = jnp.ones((3, 4))
    first = [model(x), model(x)]
    assert not np.array_equal(first[0], first[1])
    nnx.reseed(model, dropout=1)
    assert int(model.dropout.rngs.count[...]) == 0
    again = [model(x), model(x)]
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    # also through nnx.jit
    nnx.reseed(model, dropout=1)
    step = nnx.jit(lambda m, x: m(x))
    np.testing.assert_array_equal(step(model, x), first[0])
    np.testing.assert_array_equal(step(model, x), first[1])


def test_reseed_policies():
    rngs = nnx.Rngs(dropout=0).split(3)  # a stream with 3 keys
    with pytest.raises(ValueError, match=r"shape \(3,\).*policy='match_shape'"):
        nnx.reseed(rngs, dropout=5)
    nnx.reseed(rngs, dropout=5, policy="match_shape")
    expected = jax.random.split(jax.random.fold_in(jax.random.key(5), 0), 3)
    assert same(rngs.dropout.key[...], expected)
    np.testing.assert_array_equal(rngs.dropout.count[...], np.zeros(3))
    nnx.reseed(rngs, dropout=5, policy=lambda path, key, shape: jax.random.split(key, shape))
    assert same(rngs.dropout.key[...], expected)
    with pytest.raises(ValueError, match="policy must be"):
        nnx.reseed(rngs, dropout=5, policy="bad")


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


def test_sampling_methods_draw_one_key_each():
    rngs = nnx.Rngs(0, params=1)
    base, pbase = jax.random.key(0), jax.random.key(1)
    np.testing.assert_array_equal(rngs.normal((2, 3)), jax.random.normal(jax.random.fold_in(base, 0), (2, 3)))
    np.testing.assert_array_equal(
        rngs.params.uniform((2, 3), minval=-1.0),
        jax.random.uniform(jax.random.fold_in(pbase, 0), (2, 3), minval=-1.0),
    )
    np.testing.assert_array_equal(
        rngs.lecun_normal()((4, 8)), jax.nn.initializers.lecun_normal()(jax.random.fold_in(base, 1), (4, 8))
    )
    init = rngs.params.variance_scaling(2.0, "fan_in", "uniform")
    np.testing.assert_array_equal(
        init((3, 5), jnp.float16),
        jax.nn.initializers.variance_scaling(2.0, "fan_in", "uniform")(
            jax.random.fold_in(pbase, 1), (3, 5), jnp.float16
        ),
    )
    # a keyless initializer draws a new key on every call
    np.testing.assert_array_equal(
        init((3, 5)),
        jax.nn.initializers.variance_scaling(2.0, "fan_in", "uniform")(jax.random.fold_in(pbase, 2), (3, 5)),
    )
    perm = rngs.permutation(10)
    assert sorted(np.asarray(perm).tolist()) == list(range(10))
    np.testing.assert_array_equal(perm, jax.random.permutation(jax.random.fold_in(base, 2), 10))
    assert int(rngs.default.count[...]) == 3 and int(rngs.params.count[...]) == 3
    b = rngs.bernoulli(0.5, (100,))
    assert b.dtype == jnp.bool_ and 20 < int(b.sum()) < 80


def test_rngs_split_broadcast_and_mapping():
    rngs = nnx.Rngs(params=1, dropout=2, noise=3)
    new = rngs.split({"params": 5, "dropout": None, ...: (2, 4)})
    assert new.params.key.shape == (5,) and new.params.count.shape == (5,)
    assert new.dropout.key.shape == () and new.noise.key.shape == (2, 4)
    expected = jax.random.split(jax.random.fold_in(jax.random.key(1), 0), 5)
    assert same(new.params.key[...], expected)
    # streams that were split advanced by one draw; the unsplit one did not
    assert int(rngs.params.count[...]) == 1 and int(rngs.dropout.count[...]) == 0
    assert same(new.dropout.key[...], rngs.dropout.key[...])
    assert rngs.split(3).params.key.shape == (3,)

    b = nnx.Rngs(0).broadcast(4)
    keys = kd(b.default.key[...])
    assert keys.shape == (4, 2) and (keys == keys[0]).all()
    assert b.default.count.shape == (4,)
    stream = nnx.RngStream(0, tag="params").broadcast((2, 3))
    assert stream.key.shape == (2, 3) and stream.count.shape == (2, 3)
    assert len(rngs) == 3 and list(rngs) == ["params", "dropout", "noise"]


def test_forked_rngs_batch_their_counter_under_vmap():
    r = nnx.Rngs(0).fork(split=5)
    assert r.default.key.shape == (5,) and r.default.count.shape == (5,)
    keys = nnx.vmap(lambda r: r.default(), in_axes=0)(r)
    assert keys.shape == (5,)
    np.testing.assert_array_equal(r.default.count[...], np.ones(5))
    expected = [jax.random.fold_in(k, 0) for k in r.default.key[...]]
    for got, want in zip(keys, expected):
        assert same(got, want)
    assert len({tuple(kd(k).tolist()) for k in keys}) == 5

    r2 = nnx.Rngs(noise=jax.random.split(jax.random.key(0), 10))
    samples = nnx.vmap(lambda r: r.noise.normal(()), in_axes=0)(r2)
    assert samples.shape == (10,) and len(set(np.asarray(samples).tolist())) == 10
    np.testing.assert_array_equal(r2.noise.count[...], np.ones(10))


def test_split_rngs_in_place_returns_backups():
    rngs = nnx.Rngs(params=0, dropout=1)
    backups = nnx.split_rngs(rngs, splits=5)
    assert rngs.params.key.shape == (5,) and rngs.params.count.shape == (5,)
    assert rngs.dropout.key.shape == (5,)
    nnx.restore_rngs(backups)
    assert rngs.params.key.shape == () and int(rngs.params.count[...]) == 1
    assert same(rngs.params.key[...], jax.random.key(0))
    with nnx.split_rngs(rngs, splits=(2, 3), only="params"):
        assert rngs.params.key.shape == (2, 3) and rngs.dropout.key.shape == ()
    assert rngs.params.key.shape == () and int(rngs.params.count[...]) == 2


def test_split_and_fork_rngs_copy_when_graph_updates_false():
    rngs = nnx.Rngs(params=0, dropout=1)
    result = nnx.split_rngs(rngs, splits=5, graph_updates=False)
    assert rngs.params.key.shape == () and result.params.key.shape == (5,)
    assert result.params is not rngs.params
    assert int(rngs.params.count[...]) == 1  # the copy's keys were drawn from it
    forked = nnx.fork_rngs(rngs, graph=False)
    assert same(rngs.params.key[...], jax.random.key(0))
    assert not same(forked.params.key[...], rngs.params.key[...])
    assert same(forked.params.key[...], jax.random.fold_in(jax.random.key(0), 1))

    backups = nnx.fork_rngs(rngs, split={"params": 3, ...: None})
    assert rngs.params.key.shape == (3,) and rngs.dropout.key.shape == ()
    restored_count = int(rngs.dropout.count[...])
    nnx.restore_rngs(backups)
    assert rngs.params.key.shape == () and same(rngs.dropout.key[...], jax.random.key(1))
    assert restored_count == 0 and int(rngs.dropout.count[...]) == 3  # 3 draws: split, 2 forks


def test_split_and_fork_rngs_reject_unknown_options():
    rngs = nnx.Rngs(0)
    with pytest.raises(TypeError, match="split_rngs.*splitz"):
        nnx.split_rngs(rngs, splits=2, splitz=3)
    with pytest.raises(TypeError, match="fork_rngs.*spilt"):
        nnx.fork_rngs(rngs, spilt=3)
    with pytest.raises(TypeError, match="with_rngs.*forks"):
        nnx.with_rngs(rngs, forks=...)


def test_with_rngs_copies_and_advances_originals():
    rngs = nnx.Rngs(params=0, dropout=1, noise=2)
    key_var = rngs.params.key
    new = nnx.with_rngs(rngs, split={"params": 4}, fork=..., broadcast={"noise": 2})
    assert rngs.params.key is key_var and rngs.params.key.shape == ()
    assert new.params.key.shape == (4,) and new.dropout.key.shape == ()
    keys = kd(new.noise.key[...])
    assert keys.shape == (2, 2) and (keys[0] == keys[1]).all()
    assert same(new.dropout.key[...], jax.random.fold_in(jax.random.key(1), 0))
    assert [int(s.count[...]) for _, s in rngs.items()] == [1, 1, 1]

    untouched = nnx.with_rngs(rngs, fork="params")
    assert untouched.dropout is not rngs.dropout
    assert same(untouched.dropout.key[...], rngs.dropout.key[...])
    with pytest.raises(ValueError, match=r"multiple rules.*Not\('params'\)"):
        nnx.with_rngs(rngs, split={"params": 4}, fork="params")

    tree = {"a": nnx.RngStream(0, tag="params"), "b": [nnx.RngStream(1, tag="dropout")]}
    out = nnx.with_rngs(tree, split=3, only="dropout")
    assert out["a"].key.shape == () and out["b"][0].key.shape == (3,)
    assert tree["b"][0].key.shape == ()

    @nnx.with_rngs(split=4)
    def shapes(r):
        return r.params.key.shape, r["dropout"].key.shape

    assert shapes(rngs) == ((4,), (4,))
    assert rngs.params.key.shape == ()


def test_with_rngs_keeps_sharing_in_a_module():
    class M(nnx.Module):
        def __init__(self, rngs):
            self.a = nnx.Dropout(0.5, rngs=rngs)
            self.rngs = rngs
            self.same = self.rngs

    m = M(nnx.Rngs(0))
    new = nnx.with_rngs(m, split=3)
    assert new.rngs is new.same and new.rngs.default.key.shape == (3,)
    assert new.a.rngs.key.shape == (3,)
    assert m.rngs.default.key.shape == () and m.a.rngs.key.shape == ()


def test_rnglib_namespace():
    assert nnx.rnglib.Rngs is nnx.Rngs and nnx.rnglib.RngStream is nnx.RngStream
    assert nnx.rnglib.restore_rngs is nnx.restore_rngs
    counts = nnx.state(nnx.Rngs(0), nnx.rnglib.NotKey)
    assert [p for p, _ in counts.flat_state()] == [("default", "count")]
    backups = nnx.rnglib.backup_keys(nnx.Rngs(0))
    assert len(backups) == 1


def test_rngs_getitem_missing_is_key_error():
    rngs = nnx.Rngs(params=0)
    with pytest.raises(KeyError, match="No RngStream named 'x'"):
        rngs["x"]
    with pytest.raises(AttributeError):
        rngs.__json__


def test_with_rngs_and_split_rngs_reach_streams_inside_any_pytree():
    import collections

    Pair = collections.namedtuple("Pair", "rngs n")
    shared = nnx.Rngs(0)
    tree = (Pair(shared, 1), {"x": [shared]}, nnx.RngStream(3, tag="z"))
    new = nnx.with_rngs(tree, split=2)
    assert type(new[0]) is Pair and new[0].n == 1
    assert new[0].rngs is new[1]["x"][0] and new[0].rngs is not shared
    assert new[0].rngs.default.key.shape == (2,) and new[2].key.shape == (2,)
    assert shared.default.key.shape == () and int(shared.default.count[...]) == 1
    with nnx.split_rngs(tree, splits=3):
        assert shared.default.key.shape == (3,) and tree[2].key.shape == (3,)
    assert shared.default.key.shape == () and int(shared.default.count[...]) == 2


def test_docstring_examples_run():
    import doctest

    from nnxfn.facade import rngs as facade_rngs
    from nnxfn.transforms import rngs as transform_rngs

    for module in (facade_rngs, transform_rngs):
        result = doctest.testmod(
            module, extraglobs={"nnx": nnx, "jax": jax, "jnp": jnp}, optionflags=doctest.ELLIPSIS
        )
        assert result.failed == 0 and result.attempted > 0, module.__name__
