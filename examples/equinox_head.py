"""An Equinox encoder with an nnxfn head, trained with `nnx.jit` + `nnx.Optimizer`.

The Equinox modules are plain attributes of an nnxfn Module: no wrapper. Their
float arrays are `nnx.Param`s in the State, so the default optimizer trains
them; each update rebuilds the (immutable) Equinox modules and sets them on
the model. Runs in a few seconds on a CPU::

    .venv/bin/python examples/equinox_head.py --steps 200
"""

from __future__ import annotations

import argparse
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import nnxfn as nnx


class Classifier(nnx.Module):
    def __init__(self, din: int, classes: int, *, key: jax.Array, rngs: nnx.Rngs):
        k1, k2 = jax.random.split(key)
        # Equinox encoder (any Equinox module works as an attribute)
        self.encoder = eqx.nn.MLP(din, 32, 64, 2, activation=jax.nn.gelu, key=k1)
        self.norm = eqx.nn.LayerNorm(32)
        # nnxfn head
        self.hidden = nnx.Linear(32, 32, rngs=rngs)
        self.dropout = nnx.Dropout(0.1, rngs=rngs)
        self.out = nnx.Linear(32, classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.vmap(lambda v: self.norm(self.encoder(v)))(x)
        return self.out(self.dropout(nnx.relu(self.hidden(h))))


def make_data(key: jax.Array, n: int = 512, din: int = 16, classes: int = 4):
    """Gaussian blobs: one random centre per class."""
    kc, kx, ky = jax.random.split(key, 3)
    centres = jax.random.normal(kc, (classes, din)) * 2.0
    y = jax.random.randint(ky, (n,), 0, classes)
    x = centres[y] + jax.random.normal(kx, (n, din))
    return x, y


def loss_fn(model: Classifier, x: jax.Array, y: jax.Array):
    logits = model(x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, (logits.argmax(-1) == y).mean()


@nnx.jit
def train_step(model: Classifier, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array):
    (loss, acc), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, x, y)
    optimizer.update(model, grads)  # trains the Equinox encoder and the nnxfn head
    return loss, acc


@nnx.jit
def eval_step(model: Classifier, x: jax.Array, y: jax.Array):
    return loss_fn(model, x, y)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    key = jax.random.key(args.seed)
    kdata, ktest, kmodel = jax.random.split(key, 3)
    x, y = make_data(kdata)
    x_test, y_test = make_data(kdata, n=256)  # same centres (same key), fresh draws below
    x_test = x_test + 0.1 * jax.random.normal(ktest, x_test.shape)

    model = Classifier(x.shape[1], 4, key=kmodel, rngs=nnx.Rngs(args.seed))
    optimizer = nnx.Optimizer(model, optax.adam(args.learning_rate))
    encoder_before = model.encoder.layers[0].weight

    model.train()
    start = time.perf_counter()
    first = last = None
    for step in range(args.steps):
        i = (step * args.batch_size) % (x.shape[0] - args.batch_size + 1)
        loss, _ = train_step(model, optimizer, x[i : i + args.batch_size], y[i : i + args.batch_size])
        first = float(loss) if first is None else first
        last = float(loss)
    elapsed = time.perf_counter() - start

    model.eval()
    test_loss, test_acc = eval_step(model, x_test, y_test)
    changed = float(jnp.abs(model.encoder.layers[0].weight - encoder_before).max())
    result = {
        "steps": args.steps,
        "first_loss": first,
        "last_loss": last,
        "test_loss": float(test_loss),
        "test_accuracy": float(test_acc),
        "encoder_weight_change": changed,
        "encoder_type": type(model.encoder).__name__,
    }
    print(
        f"{args.steps} steps in {elapsed:.1f}s: loss {first:.3f} -> {last:.3f}, "
        f"test accuracy {result['test_accuracy']:.3f}, "
        f"Equinox encoder weights moved by up to {changed:.3f}"
    )
    return result


if __name__ == "__main__":
    main()
