"""Tree mode: train an nnxfn Module as a plain JAX pytree, with no nnx transform.

`jax.jit`, `jax.value_and_grad` and `optax` take the Module itself: the
gradients come back shaped like the Module, and `optax.apply_updates`
returns a new Module. The same model trained the graph-mode way
(`nnx.jit` + `nnx.Optimizer`, which updates the model in place) gives the
same losses, step for step. Runs in a few seconds on a CPU::

    .venv/bin/python examples/train_tree_mode.py --steps 100
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax

import nnxfn as nnx


class MLP(nnx.Module):
    def __init__(self, din: int, dhidden: int, dout: int, rngs: nnx.Rngs):
        self.hidden = nnx.List([nnx.Linear(din, dhidden, rngs=rngs), nnx.Linear(dhidden, dhidden, rngs=rngs)])
        self.norm = nnx.LayerNorm(dhidden, rngs=rngs)
        self.out = nnx.Linear(dhidden, dout, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.hidden:
            x = nnx.gelu(layer(x))
        return self.out(self.norm(x))


def loss_fn(model: MLP, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((model(x) - y) ** 2)


def data(seed: int, n: int = 256) -> tuple[jax.Array, jax.Array]:
    x = jax.random.normal(jax.random.key(seed), (n, 4))
    y = jnp.stack([jnp.sin(x[:, 0]) * x[:, 1], x[:, 2] - x[:, 3] ** 2], axis=1)
    return x, y


def train_tree_mode(model: MLP, tx: optax.GradientTransformation, x: jax.Array, y: jax.Array, steps: int):
    """Plain JAX: the Module goes in and a new Module comes out of `jax.jit`."""
    opt_state = tx.init(model)  # optax sees the Module's arrays

    @jax.jit
    def train_step(model, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(model, x, y)  # grads: an MLP
        updates, opt_state = tx.update(grads, opt_state, model)
        return optax.apply_updates(model, updates), opt_state, loss

    losses = []
    for _ in range(steps):
        model, opt_state, loss = train_step(model, opt_state, x, y)
        losses.append(float(loss))
    return model, losses


def train_graph_mode(model: MLP, tx: optax.GradientTransformation, x: jax.Array, y: jax.Array, steps: int):
    """nnx transforms: `nnx.Optimizer` updates the model in place."""
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)  # grads: a State
        optimizer.update(model, grads)
        return loss

    losses = [float(train_step(model, optimizer, x, y)) for _ in range(steps)]
    return model, losses


def main(argv: list[str] | None = None) -> tuple[list[float], list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    x, y = data(args.seed)
    tx = optax.adam(1e-2)
    _, tree_losses = train_tree_mode(MLP(4, 32, 2, nnx.Rngs(args.seed)), tx, x, y, args.steps)
    _, graph_losses = train_graph_mode(MLP(4, 32, 2, nnx.Rngs(args.seed)), tx, x, y, args.steps)
    for step in range(0, args.steps, max(1, args.steps // 5)):
        print(f"step {step:4d}  tree mode {tree_losses[step]:.6f}  graph mode {graph_losses[step]:.6f}")
    gap = max(abs(a - b) for a, b in zip(tree_losses, graph_losses))
    print(f"final loss {tree_losses[-1]:.6f}; largest difference between the two loops: {gap:.2e}")
    return tree_losses, graph_losses


if __name__ == "__main__":
    main()
