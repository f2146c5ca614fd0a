"""Data- and tensor-parallel training of a small transformer on a device mesh.

    python examples/sharded_transformer.py            # 8 simulated CPU devices
    python examples/sharded_transformer.py --steps 5 --data 4

The parameters are annotated with *logical* axis names
(`nnx.with_partitioning(init, ('embed', 'mlp'))`); `nnx.logical_axis_rules`
maps them onto a `('data', 'model')` mesh: batches are split along `data`
(data parallel), attention heads, the MLP hidden units and the vocabulary
along `model` (tensor parallel, Megatron style). The model is created
sharded in one jitted call, so no device ever holds all of it.

The same script runs on several hosts: every process runs it with
`--distributed` (see README.md, "Scaling out: meshes and multiple hosts");
JAX's own runtime (`jax.distributed.initialize`) connects them and the mesh
spans all devices of all processes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch", type=int, default=16, help="global batch size")
    p.add_argument("--devices", type=int, default=8, help="simulated CPU devices per process")
    p.add_argument("--data", type=int, default=2, help="size of the 'data' mesh axis")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize")
    p.add_argument("--coordinator", default=None, help="host:port of process 0")
    p.add_argument("--num-processes", type=int, default=None)
    p.add_argument("--process-id", type=int, default=None)
    return p.parse_args(argv)


# XLA reads its flags when JAX loads, so the simulated devices are set up first.
ARGS = parse_args(sys.argv[1:] if __name__ == "__main__" else [])
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={ARGS.devices}"
    ).strip()

import jax  # noqa: E402

if ARGS.distributed:  # before anything else touches the devices
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # (CPU only)
    jax.distributed.initialize(ARGS.coordinator, ARGS.num_processes, ARGS.process_id)

import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P  # noqa: E402

import nnxfn as nnx  # noqa: E402

# logical axis name -> mesh axis (None: replicated)
RULES = [
    ("batch", "data"),
    ("vocab", "model"),
    ("embed", None),
    ("heads", "model"),
    ("head_dim", None),
    ("mlp", "model"),
]


def part(init, *names):
    return nnx.with_partitioning(init, names)


class Block(nnx.Module):
    """Pre-norm self-attention + MLP."""

    def __init__(self, d: int, heads: int, mlp: int, *, rngs: nnx.Rngs):
        k, ones = nnx.initializers.lecun_normal(), nnx.initializers.ones_init()
        self.norm1 = nnx.LayerNorm(d, scale_init=part(ones, "embed"), rngs=rngs)
        self.attn = nnx.MultiHeadAttention(
            heads,
            d,
            kernel_init=part(k, "embed", "heads", "head_dim"),  # q, k, v: split heads
            out_kernel_init=part(k, "heads", "head_dim", "embed"),  # out: contract heads
            bias_init=part(nnx.initializers.zeros_init(), "heads", "head_dim"),
            out_bias_init=part(nnx.initializers.zeros_init(), "embed"),
            rngs=rngs,
        )
        self.norm2 = nnx.RMSNorm(d, scale_init=part(ones, "embed"), rngs=rngs)
        self.up = nnx.Linear(
            d,
            mlp,
            kernel_init=part(k, "embed", "mlp"),
            bias_init=part(nnx.initializers.zeros_init(), "mlp"),
            rngs=rngs,
        )
        self.down = nnx.Linear(mlp, d, kernel_init=part(k, "mlp", "embed"), rngs=rngs)

    def __call__(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.down(nnx.gelu(self.up(self.norm2(x))))


class Model(nnx.Module):
    def __init__(
        self, vocab: int = 64, d: int = 32, heads: int = 4, mlp: int = 64, depth: int = 2, *, rngs: nnx.Rngs
    ):
        self.embed = nnx.Embed(
            vocab, d, embedding_init=part(nnx.initializers.normal(0.5), "vocab", "embed"), rngs=rngs
        )
        self.blocks = [Block(d, heads, mlp, rngs=rngs) for _ in range(depth)]
        self.norm = nnx.LayerNorm(d, scale_init=part(nnx.initializers.ones_init(), "embed"), rngs=rngs)

    def __call__(self, tokens):
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.embed.attend(self.norm(x))  # logits, split along the vocabulary


def loss_fn(model, tokens, targets):
    logits = model(tokens)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def train_step(model, optimizer, tokens, targets):
    loss, grads = nnx.value_and_grad(loss_fn)(model, tokens, targets)
    optimizer.update(model, grads)
    return loss


# -- printing the layout ----------------------------------------------------------------
def layout(x) -> str:
    """Spec, shard shape and which devices hold which block of `x`."""
    sharding = x.sharding
    by_index: dict = {}
    for device, index in sharding.devices_indices_map(x.shape).items():
        key = tuple((s.start or 0, s.stop if s.stop is not None else n) for s, n in zip(index, x.shape))
        by_index.setdefault(key, []).append(device.id)
    spec = list(getattr(sharding, "spec", ()))
    while spec and spec[-1] is None:  # P('model', None) is P('model')
        spec.pop()
    spec = P(*spec)
    shard = sharding.shard_shape(x.shape)
    return (
        f"{str(tuple(x.shape)):>14} {str(spec):<28} shard {str(tuple(shard)):<12} "
        f"{len(by_index)} block(s) x {len(next(iter(by_index.values())))} copies"
    )


def device_map(x) -> list[str]:
    lines = []
    for device, index in sorted(x.sharding.devices_indices_map(x.shape).items(), key=lambda kv: kv[0].id):
        text = ", ".join(
            ":" if s == slice(None) else f"{s.start or 0}:{s.stop if s.stop is not None else n}"
            for s, n in zip(index, x.shape)
        )
        lines.append(f"    device {device.id}: [{text}]")
    return lines


def path_str(path) -> str:
    return ".".join(str(k) for k in path)


# -- data -----------------------------------------------------------------------------------
def batch(step: int, batch_size: int, seq: int, vocab: int, sharding: NamedSharding):
    """This process's share of a global batch, assembled into one global array."""
    local = batch_size // jax.process_count()
    rng = np.random.default_rng([step, jax.process_index()])
    tokens = rng.integers(0, vocab, size=(local, seq), dtype=np.int32)
    targets = (3 * tokens + 1) % vocab  # a fixed token-to-token map to learn
    make = jax.make_array_from_process_local_data
    return make(sharding, tokens), make(sharding, targets)


# -- main ---------------------------------------------------------------------------------------
def main(args: argparse.Namespace) -> dict:
    lead = jax.process_index() == 0
    say = print if lead else (lambda *a, **k: None)

    n = jax.device_count()
    if n % args.data:
        raise SystemExit(f"--data {args.data} must divide the device count {n}")
    mesh = jax.make_mesh(
        (args.data, n // args.data), ("data", "model"), axis_types=(AxisType.Auto, AxisType.Auto)
    )
    say(f"{jax.process_count()} process(es), {n} devices, mesh {dict(mesh.shape)}")

    t0 = time.perf_counter()
    make_model = lambda: Model(rngs=nnx.Rngs(args.seed))  # noqa: E731
    with nnx.logical_axis_rules(RULES):
        # Sharded initialisation in one line: shapes + annotations -> shardings -> jit.
        model = nnx.jit(make_model, out_shardings=nnx.get_named_sharding(nnx.eval_shape(make_model), mesh))()
        optimizer = nnx.Optimizer(model, optax.adamw(3e-3))  # moments placed like the params
        state_shardings = (nnx.get_named_sharding(model, mesh), nnx.get_named_sharding(optimizer, mesh))
    data_sharding = NamedSharding(mesh, P("data"))
    step = nnx.jit(
        train_step, in_shardings=(*state_shardings, data_sharding, data_sharding), donate_argnums=(0, 1)
    )
    say(f"model created sharded in {time.perf_counter() - t0:.1f}s\n")

    say("parameter layouts (shape, spec, shard shape, blocks x copies):")
    layouts = {}
    for path, var in nnx.state(model, nnx.Param).flat_state():
        layouts[path_str(path)] = line = layout(var[...])
        say(f"  {path_str(path):<28}{line}")
    kernel = model.blocks[0].up.kernel[...]
    say("\nblocks.0.up.kernel, block held by each device:")
    for line in device_map(kernel):
        say(line)
    mu = optimizer.opt_state[0].mu["blocks"][0]["up"]["kernel"][...]
    say(f"\nits Adam moment: {layout(mu)}\n")

    losses = []
    for i in range(args.steps):
        tokens, targets = batch(i, args.batch, 8, model.embed.num_embeddings, data_sharding)
        losses.append(float(step(model, optimizer, tokens, targets)))
        if i % 10 == 0 or i == args.steps - 1:
            say(f"step {i:3d}  loss {losses[-1]:.4f}")
    after = {path_str(p): layout(v[...]) for p, v in nnx.state(model, nnx.Param).flat_state()}
    say(f"\ndone in {time.perf_counter() - t0:.1f}s; layouts unchanged: {after == layouts}")
    return {
        "losses": losses,
        "layouts": layouts,
        "layouts_unchanged": after == layouts,
        "devices": n,
        "mesh": dict(mesh.shape),
        "moment": layout(mu),
    }


if __name__ == "__main__":
    main(ARGS)
