"""The transforms' cross-call memos obey nnxfn's cache switch (`nnxfn.core.caches`)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

import nnxfn as nnx
from nnxfn.core import caches


def _train(steps: int) -> tuple[np.ndarray, list[float], nnx.JitWrapped]:
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    x = jnp.arange(6.0).reshape(2, 3)

    @nnx.jit
    def step(m: nnx.Linear) -> jnp.ndarray:
        loss, grads = nnx.value_and_grad(lambda m: jnp.sum(m(x) ** 2))(m)
        m.kernel[...] = m.kernel[...] - 0.01 * grads["kernel"][...]
        return loss

    losses = [float(step(model)) for _ in range(steps)]
    return np.asarray(model.kernel[...]), losses, step


def test_jit_results_are_the_same_with_caching_off() -> None:
    kernel_on, losses_on, step_on = _train(4)
    with caches.caching(False):
        kernel_off, losses_off, step_off = _train(4)
    np.testing.assert_allclose(kernel_off, kernel_on, rtol=1e-6)
    np.testing.assert_allclose(losses_off, losses_on, rtol=1e-6)
    assert losses_on[-1] < losses_on[0]  # the updates were committed each step
    # with caching on, only the first call walked the model; off, every call did
    assert step_on._entries.lookups_missed == 1
    assert step_off._entries.lookups_missed == 0 and not step_off._entries._entries


def test_scan_results_are_the_same_with_caching_off() -> None:
    def run() -> tuple[np.ndarray, object]:
        counter = nnx.Variable(jnp.zeros(()))
        xs = jnp.arange(5.0)

        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))
        def body(c: nnx.Variable, x: jnp.ndarray) -> tuple[nnx.Variable, jnp.ndarray]:
            c[...] = c[...] + x
            return c, c[...] * 2

        outs = [np.asarray(body(counter, xs)[1]) for _ in range(2)]
        return np.stack(outs + [np.asarray(counter[...])[None].repeat(5)]), body

    on, body_on = run()
    with caches.caching(False):
        off, body_off = run()
    np.testing.assert_allclose(off, on)
    np.testing.assert_allclose(on[0], 2 * np.cumsum(np.arange(5.0)))
    np.testing.assert_allclose(on[1], 2 * (10 + np.cumsum(np.arange(5.0))))
    assert len(body_on._cache) == 1 and not body_off._cache
