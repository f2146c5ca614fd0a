"""Transform context is per thread: threads trace and run concurrently."""

from __future__ import annotations

import threading

import jax.numpy as jnp
import numpy as np
import optax

import nnxfn as nnx


def _train_in_thread(seed: int, results: dict, errors: list) -> None:
    try:
        model = nnx.Linear(3, 1, rngs=nnx.Rngs(seed))
        optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
        x = jnp.ones((4, 3))
        y = jnp.zeros((4, 1))

        @nnx.jit
        def step(model, optimizer, x, y):
            def loss_fn(model):
                return jnp.mean((model(x) - y) ** 2)

            loss, grads = nnx.value_and_grad(loss_fn)(model)
            optimizer.update(model, grads)
            return loss

        losses = [float(step(model, optimizer, x, y)) for _ in range(5)]
        results[seed] = losses
    except Exception as e:  # reported by the main thread
        errors.append(e)


def test_threads_train_their_own_models_concurrently():
    results: dict = {}
    errors: list = []
    threads = [threading.Thread(target=_train_in_thread, args=(s, results, errors)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(results) == list(range(8))
    for losses in results.values():
        assert losses[-1] < losses[0]  # every thread really trained its own model
    # the same training run alone gives the same numbers (no cross-thread mixing)
    alone: dict = {}
    _train_in_thread(3, alone, errors)
    np.testing.assert_allclose(alone[3], results[3], rtol=1e-6)


def test_main_thread_writes_while_another_thread_traces():
    inside = threading.Event()
    release = threading.Event()
    errors: list = []

    def slow(m, x):
        inside.set()
        release.wait(timeout=30)
        return m(x)

    def worker():
        try:
            model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
            nnx.jit(slow)(model, jnp.ones(2))
        except Exception as e:
            errors.append(e)

    thread = threading.Thread(target=worker)
    thread.start()
    assert inside.wait(timeout=60)
    try:
        other = nnx.Linear(2, 2, rngs=nnx.Rngs(1))
        other.kernel.value = jnp.zeros((2, 2))  # no transform is active in this thread
        other.extra = nnx.Param(jnp.ones(1))
    finally:
        release.set()
        thread.join()
    assert errors == []
    assert float(other.kernel.value.sum()) == 0.0
    assert float(other.extra.value[0]) == 1.0


def test_concurrent_calls_on_one_shared_model():
    model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    f = nnx.jit(lambda m, x: m(x))
    x = jnp.arange(2.0)
    expected = np.asarray(model(x))
    outs: list = []
    errors: list = []

    def worker():
        try:
            for _ in range(20):
                outs.append(np.asarray(f(model, x)))
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(outs) == 80
    for out in outs:
        np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_counter_updates_from_threads_on_shared_model_are_committed():
    class Counter(nnx.Module):
        def __init__(self):
            self.count = nnx.BatchStat(jnp.zeros(()))

    counter = Counter()
    lock = threading.Lock()

    @nnx.jit
    def bump(c):
        c.count.value = c.count.value + 1

    def worker():
        for _ in range(10):
            with lock:  # the read-modify-write of one model is the caller's to serialise
                bump(counter)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert float(counter.count.value) == 40.0
