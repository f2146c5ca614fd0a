"""Train a small CNN on scikit-learn's 8x8 digits with nnxfn (the project's main job).

    .venv/bin/python examples/train_digits.py            # defaults: >= 97% test accuracy
    .venv/bin/python examples/train_digits.py --epochs 5 --seed 1 --out outputs/run1
    .venv/bin/python examples/train_digits.py --resume   # continue from the latest checkpoint

What it does, in order: loads the bundled digits (no download) and splits them
into train/test from `--seed`; prints the `nnx.tabulate` summary of the model
(a rich table); trains it with `nnx.jit` + `nnx.Optimizer` (optax adam),
showing a tqdm progress bar; evaluates in eval mode with `nnx.metrics`; saves
a checkpoint after every epoch through orbax's `CheckpointManager` (step =
epoch, the last 3 kept, under `--out/checkpoints`); at the end restores the
latest one into an abstract model (`nnx.eval_shape`) and checks it gives
exactly the same test accuracy (exit status 1 if not); writes `metrics.json`
and `training_curves.png` to `--out`.

The same seed gives the same final numbers, also when a run is stopped
(`--stop-after N`, or killed) and continued with `--resume`: the checkpoint
holds the model, its BatchNorm statistics and dropout RNG, and the optimizer
(whose step drives the learning-rate schedule); the data order is replayed
from the seed. `main(argv)` returns the numbers as a dict (used by
`tests/test_example.py`).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
import typing as tp
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import nnxfn as nnx

NUM_CLASSES = 10


# -- data ---------------------------------------------------------------------------------
def load_data(seed: int, test_fraction: float = 0.2) -> tuple[np.ndarray, ...]:
    """Digits scaled to [0, 1] as (N, 8, 8, 1) float32, int32 labels; split from `seed`."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]
    labels = digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    return x_train, y_train, x_test, y_test


# -- model --------------------------------------------------------------------------------
class CNN(nnx.Module):
    """(Conv 3x3 -> BatchNorm -> relu -> avg_pool 2x2) x 2 -> Linear -> Dropout -> Linear."""

    def __init__(
        self, *, features: tuple[int, int] = (32, 64), hidden: int = 128, dropout: float = 0.3, rngs: nnx.Rngs
    ):
        f1, f2 = features
        self.conv1 = nnx.Conv(1, f1, kernel_size=(3, 3), rngs=rngs)
        self.bn1 = nnx.BatchNorm(f1, rngs=rngs)
        self.conv2 = nnx.Conv(f1, f2, kernel_size=(3, 3), rngs=rngs)
        self.bn2 = nnx.BatchNorm(f2, rngs=rngs)
        self.linear1 = nnx.Linear(2 * 2 * f2, hidden, rngs=rngs)  # 8x8 -> 4x4 -> 2x2
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.linear2 = nnx.Linear(hidden, NUM_CLASSES, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.avg_pool(nnx.relu(self.bn1(self.conv1(x))), window_shape=(2, 2), strides=(2, 2))
        x = nnx.avg_pool(nnx.relu(self.bn2(self.conv2(x))), window_shape=(2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        x = self.dropout(nnx.relu(self.linear1(x)))
        return self.linear2(x)


def make_metrics() -> nnx.metrics.MultiMetric:
    return nnx.metrics.MultiMetric(loss=nnx.metrics.Average("loss"), accuracy=nnx.metrics.Accuracy())


def loss_fn(model: CNN, x: jax.Array, y: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """Mean cross-entropy, and (per-example losses, logits) for the metrics."""
    logits = model(x)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return losses.mean(), (losses, logits)


@nnx.jit
def train_step(
    model: CNN, optimizer: nnx.Optimizer, metrics: nnx.metrics.MultiMetric, x: jax.Array, y: jax.Array
) -> None:
    (_, (losses, logits)), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, x, y)
    optimizer.update(model, grads)
    metrics.update(loss=losses, logits=logits, labels=y)


@nnx.jit
def eval_step(
    model: CNN, metrics: nnx.metrics.MultiMetric, x: jax.Array, y: jax.Array, mask: jax.Array
) -> None:
    _, (losses, logits) = loss_fn(model, x, y)
    metrics.update(loss=losses, logits=logits, labels=y, mask=mask)


EVAL_BATCH = 512


def evaluate(model: CNN, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Loss and accuracy of `model` in eval mode (running BatchNorm stats, no dropout).

    Batches are padded to `EVAL_BATCH` (one compilation for every split) and the
    padding is masked out of the metrics, so they are exact means over `x`.
    """
    model.eval()
    metrics = make_metrics()
    n = len(x)
    padded = -(-n // EVAL_BATCH) * EVAL_BATCH
    x = np.concatenate([x, np.zeros((padded - n, *x.shape[1:]), x.dtype)])
    y = np.concatenate([y, np.zeros(padded - n, y.dtype)])
    mask = np.arange(padded) < n
    for i in range(0, padded, EVAL_BATCH):
        batch = slice(i, i + EVAL_BATCH)
        eval_step(model, metrics, x[batch], y[batch], mask[batch])
    return {k: float(v) for k, v in metrics.compute().items()}


# -- progress bar ---------------------------------------------------------------------------
class ProgressBar:
    """A tqdm bar per epoch on a TTY (running stats as its postfix); else one line per epoch."""

    def __init__(self, total: int, desc: str, stream: tp.TextIO | None = None):
        from tqdm.auto import tqdm

        self.stream = stream if stream is not None else sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.desc, self.total, self.n = desc, total, 0
        self.start = time.perf_counter()
        self.bar = tqdm(
            total=total,
            desc=desc,
            unit="step",
            file=self.stream,
            disable=not self.tty,
            dynamic_ncols=True,
            leave=True,
        )

    def wants_stats(self) -> bool:
        """Whether `update` will show the stats (computing them costs a device sync)."""
        return self.tty

    def update(self, stats: dict[str, float] | None = None) -> None:
        if stats:
            self.bar.set_postfix({k: f"{v:.4f}" for k, v in stats.items()}, refresh=False)
        self.bar.update(1)
        self.n += 1

    def close(self, stats: dict[str, float]) -> None:
        """Finish the epoch's bar with the epoch's numbers (or print them as a line)."""
        text = " ".join(f"{k} {v:.4f}" for k, v in stats.items())
        self.bar.set_postfix_str(text, refresh=self.tty)
        self.bar.close()
        if not self.tty:
            rate = self.n / max(time.perf_counter() - self.start, 1e-9)
            self.stream.write(f"{self.desc} {self.n}/{self.total} {text} {rate:6.1f} steps/s\n")
            self.stream.flush()


# -- checkpoints ------------------------------------------------------------------------------
KEEP_CHECKPOINTS = 3


def checkpoint_manager(directory: Path) -> tp.Any:
    """orbax's CheckpointManager keeping the last 3 steps (a path if orbax is missing:
    `nnx.save_checkpoint` then writes the same layout itself)."""
    try:
        import orbax.checkpoint as ocp
    except ImportError:
        return directory
    options = ocp.CheckpointManagerOptions(max_to_keep=KEEP_CHECKPOINTS, create=True)
    return ocp.CheckpointManager(directory, options=options)


# -- outputs --------------------------------------------------------------------------------
def plot_curves(history: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = history["epoch"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, history["train_loss"], "o-", label="train (running, train mode)")
    ax_loss.plot(epochs, history["test_loss"], "o-", label="test (eval mode, epoch end)")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss", yscale="log")
    ax_acc.plot(epochs, history["train_accuracy"], "o-", label="train (running, train mode)")
    ax_acc.plot(epochs, history["test_accuracy"], "o-", label="test (eval mode, epoch end)")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--epochs", type=int, default=12, help="passes over the training set")
    p.add_argument("--batch-size", type=int, default=32, help="training batch size")
    p.add_argument(
        "--learning-rate", type=float, default=2e-3, help="peak adam learning rate (cosine decay to 0)"
    )
    p.add_argument("--seed", type=int, default=0, help="seeds the split, init, dropout, shuffling")
    p.add_argument("--out", type=Path, default=Path("outputs/digits"), help="output directory")
    p.add_argument(
        "--max-steps", type=int, default=None, help="stop after this many training steps (for quick tests)"
    )
    p.add_argument("--no-plot", action="store_true", help="do not write the training-curve PNG")
    p.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint in --out/checkpoints"
    )
    p.add_argument(
        "--stop-after",
        type=int,
        default=None,
        metavar="EPOCHS",
        help="stop after this many epochs, as if interrupted (continue with --resume)",
    )
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size", "max_steps", "stop_after"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.learning_rate <= 0:
        p.error(f"--learning-rate must be > 0, got {args.learning_rate}")
    return args


# -- main -----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict[str, tp.Any]:
    """Train, evaluate, checkpoint/restore and write outputs; returns the final metrics.

    Raises SystemExit(1) if the restored model's test accuracy differs from the
    trained model's.
    """
    args = parse_args(argv)
    t0 = time.perf_counter()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    x_train, y_train, x_test, y_test = load_data(args.seed)
    steps_per_epoch = len(x_train) // args.batch_size  # the last partial batch is dropped
    if steps_per_epoch == 0:
        raise SystemExit(f"--batch-size {args.batch_size} exceeds the {len(x_train)} training images")
    total_steps = args.epochs * steps_per_epoch
    if args.max_steps is not None:
        total_steps = min(total_steps, args.max_steps)
    print(
        f"digits: {len(x_train)} train / {len(x_test)} test images of 8x8, seed {args.seed}; "
        f"{total_steps} steps of batch {args.batch_size}, adam lr {args.learning_rate:g} (cosine decay)"
    )

    model = CNN(rngs=nnx.Rngs(params=args.seed, dropout=args.seed + 1))
    tty = sys.stdout.isatty()  # colours on a terminal; plain box drawing in logs
    width = shutil.get_terminal_size((160, 24)).columns if tty else 160
    print(
        nnx.tabulate(
            model,
            jnp.zeros((1, 8, 8, 1), jnp.float32),
            console_kwargs={"force_terminal": tty, "no_color": not tty, "width": width},
        ),
        end="",
    )

    # Cosine decay to 0 over the run: the last epochs settle the weights, so the
    # BatchNorm running statistics (used in eval mode) catch up with them.
    schedule = optax.cosine_decay_schedule(args.learning_rate, decay_steps=total_steps)
    optimizer = nnx.Optimizer(model, optax.adam(schedule))
    train_metrics = make_metrics()
    order_rng = np.random.default_rng(args.seed)
    history: dict[str, list[float]] = {
        "epoch": [],
        "train_loss": [],
        "train_accuracy": [],
        "test_loss": [],
        "test_accuracy": [],
    }
    step = 0
    n_epochs = math.ceil(total_steps / steps_per_epoch)
    ckpt_dir = (out / "checkpoints").absolute()
    if not args.resume:  # a fresh run: checkpoints of an earlier run would look newer
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    manager = checkpoint_manager(ckpt_dir)
    first_epoch = 1
    if args.resume:
        done = nnx.checkpoint_steps(manager)
        if done:  # the model and the optimizer are saved together, restored in place
            nnx.restore_checkpoint(manager, model, optimizer, step=done[-1])
            first_epoch = done[-1] + 1
            step = min(done[-1] * steps_per_epoch, total_steps)
            saved = json.loads((out / "history.json").read_text())
            history = {k: v[: done[-1]] for k, v in saved.items()}
            print(f"resumed from {ckpt_dir / str(done[-1])} (epoch {done[-1]} of {n_epochs})")
        else:
            print(f"--resume: no checkpoint in {ckpt_dir}; starting from scratch")
    for _ in range(first_epoch - 1):  # the data order of the epochs already done
        order_rng.permutation(len(x_train))
    last_epoch = n_epochs if args.stop_after is None else min(n_epochs, args.stop_after)
    train_t0 = time.perf_counter()
    for epoch in range(first_epoch, last_epoch + 1):
        model.train()
        train_metrics.reset()
        order = order_rng.permutation(len(x_train))
        steps = min(steps_per_epoch, total_steps - step)
        bar = ProgressBar(steps, f"epoch {epoch:>{len(str(n_epochs))}}/{n_epochs}")
        for i in range(steps):
            idx = order[i * args.batch_size : (i + 1) * args.batch_size]
            train_step(model, optimizer, train_metrics, x_train[idx], y_train[idx])
            step += 1
            if bar.wants_stats():  # a device sync per step: only when someone watches
                running = train_metrics.compute()
                bar.update({"loss": float(running["loss"]), "acc": float(running["accuracy"])})
            else:
                bar.update()
        train = {k: float(v) for k, v in train_metrics.compute().items()}
        test = evaluate(model, x_test, y_test)
        bar.close(
            {
                "loss": train["loss"],
                "acc": train["accuracy"],
                "test_loss": test["loss"],
                "test_acc": test["accuracy"],
            }
        )
        history["epoch"].append(epoch)
        history["train_loss"].append(train["loss"])
        history["train_accuracy"].append(train["accuracy"])
        history["test_loss"].append(test["loss"])
        history["test_accuracy"].append(test["accuracy"])
        nnx.save_checkpoint(manager, model, optimizer, step=epoch, max_to_keep=KEEP_CHECKPOINTS)
        (out / "history.json").write_text(json.dumps(history) + "\n")
    train_seconds = time.perf_counter() - train_t0
    if hasattr(manager, "wait_until_finished"):
        manager.wait_until_finished()  # saves run in the background while training goes on
    if last_epoch < n_epochs:
        print(f"stopped after epoch {last_epoch} of {n_epochs} (--stop-after); continue with --resume")
        if hasattr(manager, "close"):
            manager.close()
        return {"epochs": last_epoch, "steps": step, "history": history}

    # Final evaluation in eval mode, on both splits.
    final_train = evaluate(model, x_train, y_train)
    final_test = evaluate(model, x_test, y_test)

    # The latest checkpoint, restored into an abstract model + optimizer, must agree.
    def fresh() -> tuple[CNN, nnx.Optimizer]:
        new_model = CNN(rngs=nnx.Rngs(params=0, dropout=0))
        return new_model, nnx.Optimizer(new_model, optax.adam(schedule))

    abstract_model, abstract_optimizer = nnx.eval_shape(fresh)
    restored, _ = nnx.restore_checkpoint(manager, abstract_model, abstract_optimizer, step=n_epochs)
    if hasattr(manager, "close"):
        manager.close()
    restored_test = evaluate(restored, x_test, y_test)

    results: dict[str, tp.Any] = {
        "seed": args.seed,
        "epochs": n_epochs,
        "steps": step,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "train_loss": final_train["loss"],
        "train_accuracy": final_train["accuracy"],
        "test_loss": final_test["loss"],
        "test_accuracy": final_test["accuracy"],
        "restored_test_loss": restored_test["loss"],
        "restored_test_accuracy": restored_test["accuracy"],
        "history": history,
    }
    (out / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
    written = [ckpt_dir, (out / "metrics.json").absolute()]
    if not args.no_plot:
        png = (out / "training_curves.png").absolute()
        plot_curves(history, png)
        written.append(png)

    print(
        f"final ({step} steps): "
        f"train_loss={results['train_loss']:.6f} train_accuracy={results['train_accuracy']:.6f} "
        f"test_loss={results['test_loss']:.6f} test_accuracy={results['test_accuracy']:.6f}"
    )
    print(
        f"restored from checkpoint: test_loss={results['restored_test_loss']:.6f} "
        f"test_accuracy={results['restored_test_accuracy']:.6f}"
    )
    print("outputs written to:\n" + "\n".join(f"  {p}" for p in written))
    print(f"time: {train_seconds:.1f} s training, {time.perf_counter() - t0:.1f} s total")

    if results["restored_test_accuracy"] != results["test_accuracy"]:
        print(
            f"ERROR: restored test accuracy {results['restored_test_accuracy']:.6f} != "
            f"trained {results['test_accuracy']:.6f}",
            file=sys.stderr,
        )
        raise SystemExit(1)
    return results


if __name__ == "__main__":
    main()
