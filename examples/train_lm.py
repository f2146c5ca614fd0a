"""Train a character-level GPT on the Python documentation that ships with CPython (`make lm`).

    .venv/bin/python examples/train_lm.py                  # 1 CPU device, the default run
    .venv/bin/python examples/train_lm.py --devices 8      # 8 simulated CPU devices, mesh data 4 x model 2
    .venv/bin/python examples/train_lm.py --stop-after 100; .venv/bin/python examples/train_lm.py --resume

The text is `pydoc_data.topics` (the help() pages of every Python install:
~465,000 characters, 103 distinct); the last 10% is held out for validation.
The model (`lm_model.py`) is a GPT whose blocks are created with `nnx.vmap`
over split Rngs and applied with `nnx.scan` + `nnx.remat`. Every parameter
is annotated for FSDP (over the mesh's `data` axis) x tensor parallelism
(over `model`), and the model is created sharded inside `nnx.jit` (no host
copy of the full weights); batches are split over `data`. The printed
summary shows where each parameter lives.

Training: optax AdamW (linear warmup, cosine decay, global-norm clipping)
through `nnx.Optimizer`; a tqdm bar with the loss and tokens/s; the
validation loss after every epoch (a pass over the training text in shuffled
windows) and at the end; an orbax `CheckpointManager` step after every epoch
(and at `--stop-after`), continued with `--resume` to exactly the numbers of
an uninterrupted run (the data order is replayed from the seed). Finally the
latest checkpoint is restored into an abstract model (its validation loss
must match), and the model samples text from `--prompt` through its key/value
cache, one jitted decode step per character. Written to `--out`:
`metrics.json`, `loss.png`, `sample.txt`, `checkpoints/`.

`--devices N` sets `XLA_FLAGS=--xla_force_host_platform_device_count=N`
before JAX loads, so it only takes effect when this file runs as a program.
`main(argv)` returns the numbers of `metrics.json` (used by the tests).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
import typing as tp
from pathlib import Path

HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--devices", type=int, default=1, help="CPU devices (simulated when > 1)")
    p.add_argument(
        "--model-parallel",
        type=int,
        default=None,
        help="size of the mesh's 'model' axis (default: 2 if devices > 1)",
    )
    p.add_argument("--epochs", type=int, default=4, help="passes over the training text")
    p.add_argument("--max-steps", type=int, default=None, help="stop training after this many steps")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per step")
    p.add_argument("--length", type=int, default=128, help="context length (characters)")
    p.add_argument("--dim", type=int, default=128, help="model width")
    p.add_argument("--depth", type=int, default=4, help="transformer blocks")
    p.add_argument("--heads", type=int, default=4, help="attention heads")
    p.add_argument("--mlp", type=int, default=512, help="MLP hidden units")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--learning-rate", type=float, default=3e-3, help="peak AdamW learning rate")
    p.add_argument("--warmup", type=int, default=40, help="linear warmup steps")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0, help="seeds init, dropout, data order and sampling")
    p.add_argument("--out", type=Path, default=Path("outputs/lm"), help="output directory")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument(
        "--stop-after",
        type=int,
        default=None,
        metavar="STEPS",
        help="save and stop after this many steps (continue with --resume)",
    )
    p.add_argument("--log-every", type=int, default=10, help="steps between loss read-outs")
    p.add_argument("--prompt", default="The ", help="start of the generated sample")
    p.add_argument(
        "--sample-length", type=int, default=None, help="characters to generate (default: fill the context)"
    )
    p.add_argument("--temperature", type=float, default=0.5, help="below 1: more likely characters")
    p.add_argument("--top-k", type=int, default=20, help="sample among the k most likely characters (0: all)")
    p.add_argument("--no-plot", action="store_true", help="do not write loss.png")
    args = p.parse_args(argv)
    for name in (
        "devices",
        "epochs",
        "max_steps",
        "batch_size",
        "length",
        "dim",
        "depth",
        "heads",
        "mlp",
        "stop_after",
        "log_every",
        "model_parallel",
    ):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.model_parallel is None:
        args.model_parallel = 2 if args.devices > 1 and args.devices % 2 == 0 else 1
    if args.devices % args.model_parallel:
        p.error(f"--model-parallel {args.model_parallel} must divide --devices {args.devices}")
    return args


def force_host_devices(n: int) -> None:
    """Ask XLA for `n` CPU devices; it reads XLA_FLAGS once, when JAX loads."""
    flags = [
        f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f
    ]
    os.environ["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={n}"])


if __name__ == "__main__":  # before JAX is imported
    force_host_devices(parse_args(sys.argv[1:]).devices)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

sys.path.insert(0, str(HERE))
import lm_model as lm  # noqa: E402

import nnxfn as nnx  # noqa: E402

KEEP_CHECKPOINTS = 3


# -- data -----------------------------------------------------------------------------------
def load_text() -> str:
    """Every help() topic of this Python's `pydoc_data.topics`, in sorted order."""
    from pydoc_data.topics import topics

    return "".join(topics[k] for k in sorted(topics))


class Corpus:
    """The text as int32 character ids; the first 90% for training, the rest for validation."""

    def __init__(self, text: str, vocab: int):
        self.chars = sorted(set(text))
        if len(self.chars) > vocab:
            raise SystemExit(
                f"the text has {len(self.chars)} distinct characters, more than the vocabulary {vocab}"
            )
        self.index = {c: i for i, c in enumerate(self.chars)}
        ids = np.fromiter((self.index[c] for c in text), np.int32, len(text))
        split = int(0.9 * len(ids))
        self.train, self.val = ids[:split], ids[split:]
        counts = np.bincount(ids, minlength=len(self.chars)) / len(ids)
        self.unigram_entropy = float(-(counts * np.log(counts)).sum())  # nats per character

    def encode(self, text: str) -> np.ndarray:
        missing = sorted(set(text) - set(self.index))
        if missing:
            raise SystemExit(f"--prompt has characters the corpus does not: {missing}")
        return np.array([self.index[c] for c in text], np.int32)

    def decode(self, ids: tp.Iterable[int]) -> str:
        return "".join(self.chars[i] for i in ids)


def steps_per_epoch(n: int, length: int, batch: int) -> int:
    return ((n - 1) // length - 1) // batch  # windows that fit whatever the epoch's offset


def epoch_windows(n: int, length: int, batch: int, seed: int, epoch: int) -> np.ndarray:
    """Start indices of the epoch's windows in training order: a random offset, then
    non-overlapping windows of `length` (+1 for the targets), shuffled."""
    rng = np.random.default_rng([seed, epoch])
    offset = int(rng.integers(length))
    starts = np.arange(offset, n - length, length)
    return rng.permutation(starts)[: steps_per_epoch(n, length, batch) * batch]


def windows(ids: np.ndarray, starts: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    rows = ids[starts[:, None] + np.arange(length + 1)]
    return rows[:, :-1], rows[:, 1:]


# -- model, mesh, steps -----------------------------------------------------------------------
def make_mesh(devices: int, model_parallel: int) -> jax.sharding.Mesh:
    if jax.device_count() < devices:
        raise SystemExit(
            f"--devices {devices}: JAX has {jax.device_count()} device(s). The flag sets XLA_FLAGS before "
            "JAX loads, so run this file as a program (or set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={devices} yourself)."
        )
    auto = jax.sharding.AxisType.Auto
    return jax.make_mesh(
        (devices // model_parallel, model_parallel),
        ("data", "model"),
        axis_types=(auto, auto),
        devices=jax.devices()[:devices],
    )


def create(
    cfg: lm.Config, args: argparse.Namespace, mesh: jax.sharding.Mesh, total_steps: int
) -> tuple[lm.GPT, nnx.Optimizer]:
    """The model created sharded inside `nnx.jit`, and its AdamW optimizer (moments placed like the weights)."""

    def make() -> lm.GPT:
        return lm.GPT(cfg, rngs=nnx.Rngs(params=args.seed, dropout=args.seed + 1))

    with nnx.logical_axis_rules(lm.RULES):
        model = nnx.jit(make, out_shardings=nnx.get_named_sharding(nnx.eval_shape(make), mesh))()
        tx = lm.optimizer_tx(args.learning_rate, args.warmup, total_steps, args.weight_decay)
        optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    return model, optimizer


def parameter_layouts(model: lm.GPT) -> dict[str, dict[str, list]]:
    """Per parameter: shape, logical axes (its annotation), the mesh axes its array is
    actually split over, and the shape of the block each device holds."""
    params = nnx.state(model, nnx.Param)
    logical = dict(nnx.get_partition_spec(params).flat_state())
    out = {}
    for path, var in params.flat_state():
        x = var[...]
        spec = tuple(x.sharding.spec) + (None,) * (x.ndim - len(x.sharding.spec))
        out[".".join(map(str, path))] = {
            "shape": list(x.shape),
            "logical": list(logical[path][...]),
            "mesh": list(spec),
            "shard": list(x.sharding.shard_shape(x.shape)),
        }
    return out


def print_layouts(layouts: dict[str, dict[str, list]], mesh: jax.sharding.Mesh) -> None:
    def text(values: list) -> str:
        return "(" + ", ".join(str(v) for v in values) + ("," if len(values) == 1 else "") + ")"

    head = ("parameter", "shape", "logical axes", "mesh axes", "per device")
    rows = [(p, *(text(v[k]) for k in ("shape", "logical", "mesh", "shard"))) for p, v in layouts.items()]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    print(
        f"mesh {dict(mesh.shape)} on {mesh.devices.size} device(s); logical axes -> mesh axes: "
        + ", ".join(f"{a}->{m}" for a, m in lm.RULES if m)
    )
    for row in [head, *rows]:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def evaluate(
    model: lm.GPT, step: tp.Callable, ids: np.ndarray, length: int, batch: int, sharding: NamedSharding
) -> float:
    """Mean cross-entropy (nats per character) over all non-overlapping windows of `ids`, in eval mode."""
    model.eval()
    starts = np.arange(0, len(ids) - length, length)
    pad = -len(starts) % batch
    weights = np.concatenate(
        [np.ones((len(starts), length), np.float32), np.zeros((pad, length), np.float32)]
    )
    starts = np.concatenate([starts, np.zeros(pad, starts.dtype)])
    total = jnp.zeros(())
    for i in range(0, len(starts), batch):
        x, y = windows(ids, starts[i : i + batch], length)
        put = lambda a: jax.device_put(a, sharding)  # noqa: E731
        total = total + step(model, put(x), put(y), put(weights[i : i + batch]))
    model.train()
    return float(total) / float(weights.sum())


def generate(
    model: lm.GPT, corpus: Corpus, args: argparse.Namespace, mesh: jax.sharding.Mesh
) -> tuple[str, float]:
    """`--prompt` continued through the key/value cache, one jitted decode step per character;
    returns the text and the decode speed (characters per second, after the first step)."""
    cfg = model.cfg
    prompt = corpus.encode(args.prompt)
    room = cfg.length - len(prompt)
    n_new = room if args.sample_length is None else min(args.sample_length, room)
    if n_new < 1:
        raise SystemExit(f"--prompt fills the {cfg.length}-character context: nothing left to generate")
    model.eval()
    nnx.jit(lambda m: m.init_cache(1, cfg.length))(model)  # the caches made on the model's devices
    # Pinned to their current layouts, so the caches written by a step are fed back as they are
    # (otherwise the second call would compile again for the layouts XLA picked for its outputs).
    layouts = jax.tree.map(lambda x: x.sharding, nnx.state(model))
    step = nnx.jit(
        lm.decode_step, in_shardings=(layouts, None, None, None), static_argnames=("top_k", "vocab")
    )
    replicated = NamedSharding(mesh, P())
    temperature = jnp.float32(args.temperature)
    keys = jax.random.split(jax.random.key(args.seed + 2), len(prompt) + n_new)
    out = list(prompt)
    token = None
    for t, c in enumerate(prompt):  # the prompt goes through the cache too
        token = step(
            model,
            jax.device_put(np.array([[c]], np.int32), replicated),
            keys[t],
            temperature,
            args.top_k,
            len(corpus.chars),
        )
    jax.block_until_ready(token)
    t0 = time.perf_counter()
    for t in range(len(prompt), len(prompt) + n_new):
        out.append(int(token[0, 0]))
        if t + 1 < len(prompt) + n_new:
            token = step(model, token, keys[t], temperature, args.top_k, len(corpus.chars))
    speed = max(n_new - 1, 1) / max(time.perf_counter() - t0, 1e-9)
    model.train()
    return corpus.decode(out), speed


# -- progress, checkpoints, plot --------------------------------------------------------------
class Progress:
    """A tqdm bar per epoch on a terminal (loss, tokens/s); one line per epoch otherwise."""

    def __init__(self, total: int, desc: str, tokens_per_step: int):
        from tqdm.auto import tqdm

        self.tty = sys.stdout.isatty()
        self.desc, self.total, self.n, self.tokens = desc, total, 0, tokens_per_step
        self.start = time.perf_counter()
        self.bar = tqdm(
            total=total, desc=desc, unit="step", disable=not self.tty, dynamic_ncols=True, file=sys.stdout
        )

    def tokens_per_second(self) -> float:
        return self.n * self.tokens / max(time.perf_counter() - self.start, 1e-9)

    def update(self, steps: int, loss: float | None) -> None:
        self.n += steps
        if loss is not None:
            self.bar.set_postfix_str(f"loss {loss:.4f} {self.tokens_per_second():,.0f} tok/s", refresh=False)
        self.bar.update(steps)

    def close(self, text: str) -> None:
        rate = self.tokens_per_second()
        self.bar.set_postfix_str(f"{text} {rate:,.0f} tok/s", refresh=self.tty)
        self.bar.close()
        if not self.tty:
            print(f"{self.desc} {self.n}/{self.total} {text} {rate:,.0f} tok/s", flush=True)


def checkpoint_manager(directory: Path) -> tp.Any:
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=KEEP_CHECKPOINTS, create=True)
    return ocp.CheckpointManager(directory, options=options)


def plot(history: dict[str, list], unigram: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = np.asarray(history["train_loss"])
    fig, ax = plt.subplots(figsize=(8, 4.5))
    steps = np.arange(1, len(train) + 1)
    ax.plot(steps, train, color="tab:blue", alpha=0.3, lw=0.8)
    window = max(1, len(train) // 50)
    if len(train) >= window:
        smooth = np.convolve(train, np.ones(window) / window, mode="valid")
        ax.plot(
            steps[window - 1 :], smooth, color="tab:blue", label=f"train (mean of {window} steps, dropout on)"
        )
    ax.plot(
        history["val_step"], history["val_loss"], "o-", color="tab:orange", label="validation (eval mode)"
    )
    ax.axhline(unigram, color="gray", ls="--", lw=1, label=f"unigram entropy {unigram:.3f}")
    ax.axhline(0.6 * unigram, color="gray", ls=":", lw=1, label=f"0.6 x unigram entropy {0.6 * unigram:.3f}")
    ax.set(
        xlabel="step",
        ylabel="cross-entropy (nats per character)",
        title="Character-level GPT on pydoc_data.topics",
    )
    ax.set_ylim(0, max(float(train[: max(1, len(train) // 20)].max()), unigram) * 1.05)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# -- main -----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict[str, tp.Any]:
    """Train, checkpoint, restore, sample and write outputs; returns the final numbers.

    Raises SystemExit(1) if the restored model's validation loss differs from the trained one's.
    """
    args = parse_args(argv)
    t0 = time.perf_counter()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    cfg = lm.Config(
        length=args.length,
        dim=args.dim,
        heads=args.heads,
        depth=args.depth,
        mlp=args.mlp,
        dropout=args.dropout,
    )
    corpus = Corpus(load_text(), cfg.vocab)
    per_epoch = steps_per_epoch(len(corpus.train), cfg.length, args.batch_size)
    if per_epoch < 1:
        raise SystemExit(f"--batch-size {args.batch_size} x --length {cfg.length} exceeds the training text")
    total_steps = (
        args.epochs * per_epoch if args.max_steps is None else min(args.max_steps, args.epochs * per_epoch)
    )
    n_epochs = math.ceil(total_steps / per_epoch)
    tokens_per_step = args.batch_size * cfg.length
    print(
        f"pydoc_data.topics: {len(corpus.train):,} train / {len(corpus.val):,} validation characters, "
        f"{len(corpus.chars)} distinct; unigram entropy {corpus.unigram_entropy:.4f} nats/char "
        f"(target: validation loss <= {0.6 * corpus.unigram_entropy:.4f})"
    )

    mesh = make_mesh(args.devices, args.model_parallel)
    if args.batch_size % mesh.shape["data"]:
        raise SystemExit(
            f"--batch-size {args.batch_size} must be a multiple of the data axis ({mesh.shape['data']})"
        )
    model, optimizer = create(cfg, args, mesh, total_steps)
    n_params = sum(v[...].size for _, v in nnx.state(model, nnx.Param).flat_state())
    print(
        f"GPT: {n_params:,} parameters, {cfg.depth} blocks (nnx.vmap-created, nnx.scan + nnx.remat applied), "
        f"width {cfg.dim}, {cfg.heads} heads, MLP {cfg.mlp}, context {cfg.length}, vocabulary {cfg.vocab}"
    )
    print_layouts(parameter_layouts(model), mesh)
    print(
        f"training: {total_steps} steps ({n_epochs} epoch(s) of {per_epoch}) of {args.batch_size} x {cfg.length} "
        f"characters; AdamW peak lr {args.learning_rate:g}, {args.warmup} warmup steps, cosine decay, clip 1.0"
    )

    data = NamedSharding(mesh, P("data"))
    with nnx.logical_axis_rules(lm.RULES):
        state_shardings = (nnx.get_named_sharding(model, mesh), nnx.get_named_sharding(optimizer, mesh))
    train_step = nnx.jit(lm.train_step, in_shardings=(*state_shardings, data, data), donate_argnums=(0, 1))
    eval_step = nnx.jit(lm.eval_step)
    eval_batch = max(args.batch_size, 64 // mesh.shape["data"] * mesh.shape["data"])

    history: dict[str, list] = {"train_loss": [], "val_step": [], "val_loss": []}
    step = 0
    ckpt_dir = (out / "checkpoints").absolute()
    if not args.resume:  # a fresh run: checkpoints of an earlier run would look newer
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    manager = checkpoint_manager(ckpt_dir)
    if args.resume:
        done = nnx.checkpoint_steps(manager)
        if done:  # model (with its dropout RNG) and optimizer (whose step drives the schedule)
            nnx.restore_checkpoint(manager, model, optimizer, step=done[-1])
            step = done[-1]
            saved = json.loads((out / "history.json").read_text())
            history = {
                "train_loss": saved["train_loss"][:step],
                "val_step": [s for s in saved["val_step"] if s <= step],
                "val_loss": [v for s, v in zip(saved["val_step"], saved["val_loss"]) if s <= step],
            }
            print(f"resumed from {ckpt_dir / str(step)} (step {step} of {total_steps})")
        else:
            print(f"--resume: no checkpoint in {ckpt_dir}; starting from scratch")

    def save(at: int) -> None:
        nnx.save_checkpoint(manager, model, optimizer, step=at)
        (out / "history.json").write_text(json.dumps(history) + "\n")

    last = total_steps if args.stop_after is None else min(total_steps, args.stop_after)
    model.train()
    train_t0, train_steps = time.perf_counter(), 0
    while step < last:
        epoch, first = divmod(step, per_epoch)
        starts = epoch_windows(len(corpus.train), cfg.length, args.batch_size, args.seed, epoch)
        n = min(per_epoch, last - epoch * per_epoch) - first
        bar = Progress(n, f"epoch {epoch + 1:>{len(str(n_epochs))}}/{n_epochs}", tokens_per_step)
        pending: list[jax.Array] = []
        for i in range(first, first + n):
            x, y = windows(corpus.train, starts[i * args.batch_size : (i + 1) * args.batch_size], cfg.length)
            pending.append(train_step(model, optimizer, jax.device_put(x, data), jax.device_put(y, data)))
            step += 1
            if len(pending) == args.log_every or i == first + n - 1:
                losses = [float(v) for v in pending]  # one wait for the whole batch of steps
                history["train_loss"].extend(losses)
                bar.update(len(pending), float(np.mean(losses)))
                pending = []
        train_steps += n
        ended_epoch = step % per_epoch == 0 or step == total_steps
        text = f"loss {np.mean(history['train_loss'][-n:]):.4f}"
        if ended_epoch:
            history["val_step"].append(step)
            history["val_loss"].append(evaluate(model, eval_step, corpus.val, cfg.length, eval_batch, data))
            text += f" val_loss {history['val_loss'][-1]:.4f}"
        bar.close(text)
        if ended_epoch or step == last:
            save(step)
    train_seconds = time.perf_counter() - train_t0
    manager.wait_until_finished()
    if last < total_steps:
        manager.close()
        print(f"stopped after step {last} of {total_steps} (--stop-after); continue with --resume")
        return {"steps": step, "history": history}

    # The latest checkpoint, restored into an abstract model (shapes and shardings, no arrays:
    # each array is read straight onto its shards), must give the same loss.
    with nnx.logical_axis_rules(lm.RULES):
        graphdef, abstract = nnx.get_abstract_model(lambda: create(cfg, args, mesh, total_steps), mesh)
    restored, _ = nnx.restore_checkpoint(manager, *nnx.merge(graphdef, abstract), step=total_steps)
    manager.close()
    val_loss = history["val_loss"][-1]
    restored_val = evaluate(restored, eval_step, corpus.val, cfg.length, eval_batch, data)

    sample, decode_speed = generate(model, corpus, args, mesh)
    (out / "sample.txt").write_text(sample + "\n")
    unigram = corpus.unigram_entropy
    results: dict[str, tp.Any] = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "devices": mesh.devices.size,
        "mesh": dict(mesh.shape),
        "parameters": n_params,
        "steps": step,
        "epochs": n_epochs,
        "unigram_entropy": unigram,
        "val_loss": val_loss,
        "val_over_unigram": val_loss / unigram,
        "restored_val_loss": restored_val,
        "train_seconds": train_seconds,
        "train_tokens_per_second": train_steps * tokens_per_step / train_seconds if train_steps else None,
        "decode_chars_per_second": decode_speed,
        "sample": sample,
        "layouts": parameter_layouts(model),  # after training: still as annotated
        "history": history,
    }
    (out / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
    if not args.no_plot:
        plot(history, unigram, out / "loss.png")

    print(
        f"final ({step} steps): val_loss {val_loss:.4f} nats/char = {val_loss / unigram:.3f} x the unigram "
        f"entropy {unigram:.4f} (target <= 0.6); train loss (last epoch, dropout on) "
        f"{np.mean(history['train_loss'][-per_epoch:]):.4f}"
    )
    print(f"restored from checkpoint {ckpt_dir / str(total_steps)}: val_loss {restored_val:.4f}")
    print(
        f"sample ({decode_speed:,.0f} characters/s through the KV cache, temperature {args.temperature:g}, top-k {args.top_k}):"
    )
    print("-" * 72 + "\n" + sample + "\n" + "-" * 72)
    print(
        f"outputs written to {out.absolute()}: metrics.json, sample.txt"
        + ("" if args.no_plot else ", loss.png")
        + ", checkpoints/"
    )
    print(
        f"time: {train_seconds:.1f} s training ({results['train_tokens_per_second'] or 0:,.0f} tokens/s), {time.perf_counter() - t0:.1f} s total"
    )
    if restored_val != val_loss:
        print(f"ERROR: restored validation loss {restored_val} != trained {val_loss}", file=sys.stderr)
        raise SystemExit(1)
    return results


if __name__ == "__main__":
    main()
