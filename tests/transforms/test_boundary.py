"""The jit entry cache: never stale, holds arguments weakly, invalidates locally."""

from __future__ import annotations

import gc
import weakref

import chex
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import nnxfn as nnx


@chex.dataclass
class Stats:
    scale: jax.Array


def test_foreign_pytree_changed_in_place_is_seen_by_next_call():
    m = nnx.Module()
    m.stats = nnx.data(Stats(scale=jnp.array(1.0)))
    f = nnx.jit(lambda m, x: m.stats.scale * x)
    assert float(f(m, 2.0)) == 2.0
    m.stats.scale = jnp.array(5.0)  # in place: no attribute of `m` is assigned
    assert float(f(m, 2.0)) == 10.0
    assert float(f(m, 3.0)) == 15.0


def test_dict_in_foreign_pytree_changed_in_place_is_seen():
    m = nnx.Module()
    m.table = nnx.data(Stats(scale={"a": jnp.array(1.0)}))
    f = nnx.jit(lambda m: m.table.scale["a"] * 2)
    assert float(f(m)) == 2.0
    m.table.scale["a"] = jnp.array(4.0)
    assert float(f(m)) == 8.0


def test_model_passed_once_and_deleted_is_freed():
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    f = nnx.jit(lambda m, x: m(x))
    f(model, jnp.ones(2))
    f(model, jnp.ones(2))  # a cache hit too
    ref = weakref.ref(model)
    kernel = weakref.ref(model.kernel)
    del model
    gc.collect()
    assert ref() is None
    assert kernel() is None
    # the jitted function still works for a new model of the same structure
    other = nnx.Linear(2, 3, rngs=nnx.Rngs(1))
    np.testing.assert_allclose(f(other, jnp.ones(2)), other(jnp.ones(2)), rtol=1e-6)


def test_unrelated_module_built_between_calls_keeps_the_cache():
    model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    f = nnx.jit(lambda m, x: m(x))
    f(model, jnp.ones(2))
    before = f._entries.lookups_missed
    for _ in range(3):
        nnx.Linear(4, 4, rngs=nnx.Rngs(1))  # attribute writes elsewhere
        other = nnx.Linear(2, 2, rngs=nnx.Rngs(2))
        other.eval()
        f(model, jnp.ones(2))
    assert f._entries.lookups_missed == before


def test_structural_change_of_the_argument_is_seen():
    model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    f = nnx.jit(lambda m, x: m(x) * getattr(m, "gain", 1.0))
    y = f(model, jnp.ones(2))
    model.gain = nnx.Param(jnp.array(3.0))
    np.testing.assert_allclose(f(model, jnp.ones(2)), 3 * y, rtol=1e-6)
    model.kernel = nnx.Param(jnp.zeros((2, 2)))
    np.testing.assert_allclose(f(model, jnp.ones(2)), 3 * model.bias.value, rtol=1e-6)


class _Head(nnx.Module):
    def __init__(self, key):
        self.mlp = eqx.nn.MLP(2, 1, 4, 1, key=key)
        self.count = nnx.BatchStat(jnp.zeros(()))


def test_equinox_submodule_rebuilt_on_commit_keeps_the_cache():
    head = _Head(jax.random.key(0))

    @nnx.jit
    def step(head, x):
        head.count.value = head.count.value + 1
        head.mlp = jax.tree.map(lambda a: a * 0.5 if eqx.is_array(a) else a, head.mlp)
        return head.mlp(x)

    step(head, jnp.ones(2))
    missed = step._entries.lookups_missed
    w0 = head.mlp.layers[0].weight
    for _ in range(3):
        step(head, jnp.ones(2))
    assert step._entries.lookups_missed == missed  # same treedef: no structural change
    np.testing.assert_allclose(head.mlp.layers[0].weight, w0 * 0.125, rtol=1e-6)
    assert float(head.count.value) == 4.0


def test_optimizer_linked_to_its_model_keeps_the_cache():
    import optax

    model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x):
        grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model)
        optimizer.update(model, grads)

    step(model, optimizer, jnp.ones((1, 2)))
    missed = step._entries.lookups_missed
    k0 = np.asarray(model.kernel.value)
    for _ in range(3):
        step(model, optimizer, jnp.ones((1, 2)))
    assert step._entries.lookups_missed == missed  # the optimizer's link is not a structural change
    assert int(optimizer.step.value) == 4
    assert not np.allclose(model.kernel.value, k0)
