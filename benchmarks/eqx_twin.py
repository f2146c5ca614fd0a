"""A Module holding one `eqx.nn.MLP` against its all-nnxfn twin.

    .venv/bin/python benchmarks/eqx_twin.py --calls 200 --rounds 5

Both models compute relu(Linear) x2 + Linear (width 32) under the same
`nnx.jit` train step with `nnx.Optimizer(adam)`; the only difference is that
one holds the layers as an Equinox module (a foreign pytree, its arrays
boxed as Params in the State) and the other as `nnx.Linear`s. Prints the
median µs per step of each, interleaved in one process, and their ratio
(target ≤ 1.3×).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import nnxfn as nnx  # noqa: E402
from benchmarks.timing import median, no_gc  # noqa: E402

WIDTH = 32


class EqxHead(nnx.Module):
    def __init__(self, key: jax.Array):
        self.mlp = eqx.nn.MLP(WIDTH, WIDTH, WIDTH, 2, key=key)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.vmap(self.mlp)(x)


class NnxHead(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.layers = [nnx.Linear(WIDTH, WIDTH, rngs=rngs) for _ in range(3)]

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)


@nnx.jit
def train_step(model, optimizer, x, y):
    def loss_fn(model):
        return jnp.mean((model(x) - y) ** 2)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


def time_steps(model, optimizer, x, y, calls: int) -> float:
    with no_gc():
        samples = []
        for _ in range(calls):
            t0 = time.perf_counter()
            jax.block_until_ready(train_step(model, optimizer, x, y))
            samples.append(time.perf_counter() - t0)
    return median(samples) * 1e6


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    x = jnp.ones((8, WIDTH))
    y = jnp.zeros((8, WIDTH))
    models = {
        "eqx": EqxHead(jax.random.key(0)),
        "nnx": NnxHead(nnx.Rngs(0)),
    }
    opts = {k: nnx.Optimizer(m, optax.adam(1e-3), wrt=nnx.Param) for k, m in models.items()}
    for k in models:  # compile and warm up
        for _ in range(3):
            train_step(models[k], opts[k], x, y)
    results: dict[str, list[float]] = {k: [] for k in models}
    for r in range(args.rounds):
        for k in list(models) if r % 2 == 0 else list(models)[::-1]:
            results[k].append(time_steps(models[k], opts[k], x, y, args.calls))
    out = {k: median(v) for k, v in results.items()}
    out["ratio"] = out["eqx"] / out["nnx"]
    print(
        f"eqx.nn.MLP inside: {out['eqx']:.0f} µs, all-nnxfn twin: {out['nnx']:.0f} µs, "
        f"ratio {out['ratio']:.2f}× (target ≤ 1.3×)"
    )
    return out


if __name__ == "__main__":
    main()
