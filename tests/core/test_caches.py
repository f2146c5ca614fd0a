"""`core/caches.py`: the switch, and split/merge/state giving the same results with
caching on and off (GraphDefs, States, Variable identity, sharing)."""

import jax
import jax.numpy as jnp
import numpy as np

import nnxfn as nnx
from nnxfn.core import caches, splitcache


class Block(nnx.Module):
    def __init__(self, shared: nnx.Param, seed: int):
        self.shared = shared
        self.own = nnx.Param(jax.random.normal(jax.random.key(seed), (2, 3)))
        self.stats = nnx.BatchStat(jnp.zeros(3))


class Tied(nnx.Module):
    """Two blocks sharing one Param, a shared sub-module, a plain list and a cycle."""

    def __init__(self):
        shared = nnx.Param(jnp.arange(6.0).reshape(2, 3))
        self.a = Block(shared, 1)
        self.b = Block(shared, 2)
        self.again = self.a
        self.items = [self.b, jnp.ones(2)]
        self.a.parent = self


def _models():
    return [Tied(), nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.Sequential(nnx.Linear(2, 2, rngs=nnx.Rngs(1)))]


def _results(model):
    """What split/merge/state give, with the identities they must keep."""
    g1, s1 = nnx.split(model)
    g2, s2 = nnx.split(model)
    params, rest = nnx.split(model, nnx.Param, ...)[1:]
    merged = nnx.merge(g1, s1)
    copied = nnx.merge(g1, s1, copy=True)
    leaves = jax.tree.leaves(s1)
    return {
        "graphdef": g1,
        "graphdef_again": g2,
        "state": jax.tree.map(np.asarray, nnx.state(model).to_pure_dict()),
        "params": jax.tree.map(np.asarray, params.to_pure_dict()),
        "rest": jax.tree.map(np.asarray, rest.to_pure_dict()),
        "own_variables": [v is w for v, w in zip(jax.tree.leaves(s1, is_leaf=_is_var), _vars(model))],
        "same_leaves_twice": [a is b for a, b in zip(leaves, jax.tree.leaves(s2))],
        "merged_shares_state": [v is w for v, w in zip(_vars(merged), jax.tree.leaves(s1, is_leaf=_is_var))],
        "copy_is_detached": [v is not w for v, w in zip(_vars(copied), _vars(model))],
        "merged_graphdef": nnx.graphdef(merged),
        "duplicates": nnx.find_duplicates(model),
    }


def _is_var(x):
    return isinstance(x, nnx.Variable)


def _vars(model):
    return [v for _, v in sorted(nnx.iter_graph(model), key=lambda pv: pv[0]) if _is_var(v)]


def _same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if key in ("state", "params", "rest"):
            jax.tree.map(np.testing.assert_array_equal, a[key], b[key])
        else:
            assert a[key] == b[key], key


def test_split_merge_state_agree_with_caching_on_and_off():
    for make in range(3):
        with caches.caching(True):
            on = _results(_models()[make])
        with caches.caching(False):
            off = _results(_models()[make])
        _same(on, off)
        assert all(on["own_variables"]) and all(on["same_leaves_twice"]) and all(on["merged_shares_state"])
        assert all(on["copy_is_detached"])


def test_tied_model_keeps_sharing_either_way():
    for on in (True, False):
        with caches.caching(on):
            model = Tied()
            _, state = nnx.split(model)
            assert sorted(state.keys()) == ["a", "b", "items"]
            assert "shared" not in state["b"]  # the second path is a reference
            new = nnx.merge(*nnx.split(model))
            assert new.a.shared is new.b.shared and new.again is new.a and new.a.parent is new


def test_split_is_remembered_only_while_caching_is_on():
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    with caches.caching(True):
        first = nnx.split(model)
        assert splitcache.cached_split(model) is not None
        second = nnx.split(model)
        assert second[0] is first[0] and second[1] is first[1]  # the remembered pair
    with caches.caching(False):
        assert len(splitcache.SPLITS) == 0  # switching cleared it
        again = nnx.split(model)
        assert again[1] is not first[1] and again == first  # equal, recomputed
        assert splitcache.cached_split(model) is None


def test_structural_change_invalidates_the_remembered_split():
    with caches.caching(True):
        model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
        graphdef, _ = nnx.split(model)
        before = caches.STRUCTURE.now
        model.extra = nnx.Param(jnp.ones(1))
        assert caches.STRUCTURE.now > before
        new_graphdef, state = nnx.split(model)
        assert new_graphdef != graphdef and "extra" in state


def test_switch_reads_and_restores():
    before = caches.enabled()
    with caches.caching(False):
        assert not caches.enabled() and not nnx.core.caches.enabled()
        with caches.caching(True):
            assert caches.enabled()
        assert not caches.enabled()
    assert caches.enabled() == before
    assert nnx.set_caching is caches.set_caching and nnx.caching is caches.caching
    assert any(c.name == "split" for c in caches.all_caches())
