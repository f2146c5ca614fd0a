"""The behaviour shown in Flax's `mnist_tutorial`, run with `import nnxfn as nnx`.

No download: 8x8 synthetic "digits" (a fixed random template per class plus
noise) stand in for MNIST, and the CNN is scaled down to match.
"""

from __future__ import annotations

from functools import partial

import jax.numpy as jnp
import numpy as np
import optax

import nnxfn as nnx


class CNN(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 8, kernel_size=(3, 3), rngs=rngs)
        self.batch_norm1 = nnx.BatchNorm(8, rngs=rngs)
        self.dropout1 = nnx.Dropout(rate=0.025)
        self.conv2 = nnx.Conv(8, 16, kernel_size=(3, 3), rngs=rngs)
        self.batch_norm2 = nnx.BatchNorm(16, rngs=rngs)
        self.avg_pool = partial(nnx.avg_pool, window_shape=(2, 2), strides=(2, 2))
        self.linear1 = nnx.Linear(64, 32, rngs=rngs)
        self.dropout2 = nnx.Dropout(rate=0.025)
        self.linear2 = nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x, rngs: nnx.Rngs | None = None):
        x = self.avg_pool(nnx.relu(self.batch_norm1(self.dropout1(self.conv1(x), rngs=rngs))))
        x = self.avg_pool(nnx.relu(self.batch_norm2(self.conv2(x))))
        x = x.reshape(x.shape[0], -1)
        x = nnx.relu(self.dropout2(self.linear1(x), rngs=rngs))
        return self.linear2(x)


def make_data(n, seed):
    templates = np.random.default_rng(0).normal(size=(10, 8, 8, 1)).astype(np.float32)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n)
    images = templates[labels] + 0.3 * rng.normal(size=(n, 8, 8, 1)).astype(np.float32)
    return {"image": images, "label": labels.astype(np.int32)}


def batches(ds, batch_size):
    for i in range(0, len(ds["label"]) - batch_size + 1, batch_size):
        yield {k: v[i : i + batch_size] for k, v in ds.items()}


def loss_fn(model: CNN, batch, rngs: nnx.Rngs | None = None):
    logits = model(batch["image"], rngs)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits=logits, labels=batch["label"]).mean()
    return loss, logits


@nnx.jit
def train_step(model: CNN, optimizer: nnx.Optimizer, metrics: nnx.MultiMetric, rngs: nnx.Rngs, batch):
    grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
    (loss, logits), grads = grad_fn(model, batch, rngs)
    metrics.update(loss=loss, logits=logits, labels=batch["label"])
    optimizer.update(model, grads)


@nnx.jit
def eval_step(model: CNN, metrics: nnx.MultiMetric, batch):
    loss, logits = loss_fn(model, batch)
    metrics.update(loss=loss, logits=logits, labels=batch["label"])


@nnx.jit
def pred_step(model: CNN, batch):
    logits = model(batch["image"], None)
    return logits.argmax(axis=1)


def test_forward_pass_shape():
    model = CNN(rngs=nnx.Rngs(0))
    y = model(jnp.ones((1, 8, 8, 1)), nnx.Rngs(0))
    assert y.shape == (1, 10)


def test_metrics_match_numpy():
    metrics = nnx.MultiMetric(accuracy=nnx.metrics.Accuracy(), loss=nnx.metrics.Average("loss"))
    logits = jnp.array([[2.0, 1.0], [0.0, 3.0], [5.0, 1.0]])
    labels = jnp.array([0, 0, 0])
    metrics.update(loss=jnp.array(1.5), logits=logits, labels=labels)
    metrics.update(loss=jnp.array(0.5), logits=logits[:1], labels=labels[:1])
    out = metrics.compute()
    assert set(out) == {"accuracy", "loss"}
    np.testing.assert_allclose(out["accuracy"], 3 / 4)
    np.testing.assert_allclose(out["loss"], 1.0)
    metrics.reset()
    metrics.update(loss=jnp.array(2.0), logits=logits, labels=labels)
    np.testing.assert_allclose(metrics.compute()["loss"], 2.0)


def test_training_loop_with_views_and_metrics():
    model = CNN(rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adamw(0.005, 0.9), wrt=nnx.Param)
    metrics = nnx.MultiMetric(accuracy=nnx.metrics.Accuracy(), loss=nnx.metrics.Average("loss"))
    train_model = nnx.view(model, deterministic=False, use_running_average=False)
    eval_model = nnx.view(model, deterministic=True, use_running_average=True)
    train_ds, test_ds = make_data(512, 1), make_data(128, 2)
    rngs = nnx.Rngs(0)

    history = []
    for _epoch in range(3):
        for batch in batches(train_ds, 32):
            train_step(train_model, optimizer, metrics, rngs, batch)
        train_metrics = metrics.compute()
        metrics.reset()
        for batch in batches(test_ds, 32):
            eval_step(eval_model, metrics, batch)
        history.append((train_metrics, metrics.compute()))
        metrics.reset()

    assert int(optimizer.step.value) == 3 * 16
    first_train, _ = history[0]
    last_train, last_test = history[-1]
    assert float(last_train["loss"]) < float(first_train["loss"])
    assert float(last_test["accuracy"]) > 0.8, history
    assert float(jnp.abs(model.batch_norm1.mean[...]).sum()) > 0  # updated through the view
    pred = pred_step(eval_model, {"image": test_ds["image"][:32]})
    assert pred.shape == (32,)
    assert float((pred == test_ds["label"][:32]).mean()) > 0.8
