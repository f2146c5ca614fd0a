"""The character-level GPT of examples/train_lm.py, timed three ways in one process.

    .venv/bin/python benchmarks/lm.py --devices 1
    .venv/bin/python benchmarks/lm.py --devices 8        # 8 simulated CPU devices, mesh data 4 x model 2
    .venv/bin/python benchmarks/lm.py --quick            # a tiny model, a few rounds: a smoke run

Variants (the same model file, `examples/lm_model.py`, and the same train and
decode step functions):

- `nnxfn`: `nnx.jit(train_step)(model, optimizer, x, y)` on the Modules;
- `flax`: Flax NNX (the model file loaded with `from flax import nnx` instead
  of `import nnxfn as nnx`), `nnx.jit` the same way;
- `raw`: `jax.jit` of the pure function over a split state:
  `state -> merge -> train_step -> (loss, nnx.state(...))`.

All three start from the same values and layouts (the model created sharded
as in train_lm.py, the batch split over `data`; no `in_shardings`, so XLA
keeps or picks the layouts the same way for all) and donate the train state;
the losses and the decoded tokens must agree (checked before timing).
Measured: train-step tokens/s (median step time; the variants take turns
step by step, each step waited for), decode tokens/s (chained one-token
steps through the KV cache, `--decode-batch` rows), first call (trace +
compile + run of a never-called step, median of fresh builds), the compiled
memory of the train step (`lower(...).compile().memory_analysis()`) and
whether its compiled program has the same instructions as raw JAX's. A
benchmark measures: it fails only if the variants compute different numbers.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import gc
import json
import math
import os
import re
import sys
import time
import types
import typing as tp
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def parse_args(argv: tp.Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=1, help="CPU devices (simulated when > 1)")
    p.add_argument(
        "--model-parallel", type=int, default=None, help="'model' mesh axis (default 2 if devices > 1)"
    )
    p.add_argument("--quick", action="store_true", help="tiny model, few rounds: a smoke run")
    p.add_argument("--no-flax", action="store_true", help="skip the Flax NNX variant")
    p.add_argument("--batch-size", type=int, default=None, help="train batch (default 32; quick 8)")
    p.add_argument("--decode-batch", type=int, default=8, help="rows decoded together")
    p.add_argument(
        "--train-steps", type=int, default=None, help="timed train steps per variant (default 60; quick 2)"
    )
    p.add_argument("--reps", type=int, default=None, help="decode rounds per variant (default 7; quick 2)")
    p.add_argument(
        "--decode-steps", type=int, default=None, help="decode steps per round (default 64; quick 8)"
    )
    p.add_argument(
        "--first-call-reps",
        type=int,
        default=None,
        help="fresh builds per variant (default 5; quick 1; 0: not measured)",
    )
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    q = args.quick
    args.batch_size = args.batch_size or (8 if q else 32)
    args.train_steps = args.train_steps or (2 if q else 60)
    args.reps = args.reps or (2 if q else 7)
    args.decode_steps = args.decode_steps or (8 if q else 64)
    if args.first_call_reps is None:
        args.first_call_reps = 1 if q else 5
    if args.model_parallel is None:
        args.model_parallel = 2 if args.devices > 1 and args.devices % 2 == 0 else 1
    return args


if __name__ == "__main__":  # XLA reads its flags when JAX loads
    _n = parse_args(sys.argv[1:]).devices
    _flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f]
    os.environ["XLA_FLAGS"] = " ".join([*_flags, f"--xla_force_host_platform_device_count={_n}"])

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

for _p in (str(ROOT), str(EXAMPLES)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import lm_model  # noqa: E402
import train_lm  # noqa: E402

import nnxfn  # noqa: E402
from benchmarks.timing import median, no_gc  # noqa: E402

MEMORY_FIELDS = (
    "temp_size_in_bytes",
    "argument_size_in_bytes",
    "output_size_in_bytes",
    "alias_size_in_bytes",
)
SEED = 0


def flax_model_module() -> types.ModuleType:
    """`examples/lm_model.py` with its one nnxfn line swapped for `from flax import nnx`."""
    name = "lm_model_flax"
    if name in sys.modules:
        return sys.modules[name]
    source = (EXAMPLES / "lm_model.py").read_text()
    if source.count("import nnxfn as nnx\n") != 1:
        raise RuntimeError("examples/lm_model.py must import nnxfn exactly once, as `import nnxfn as nnx`")
    module = types.ModuleType(name)
    module.__file__ = str(EXAMPLES / "lm_model.py")
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    exec(
        compile(source.replace("import nnxfn as nnx\n", "from flax import nnx\n"), module.__file__, "exec"),
        module.__dict__,
    )
    return module


def _has_flax() -> bool:
    import importlib.util

    return importlib.util.find_spec("flax") is not None


def config(args: argparse.Namespace) -> lm_model.Config:
    if args.quick:
        return lm_model.Config(length=32, dim=32, heads=4, depth=2, mlp=64)
    return lm_model.Config()  # train_lm.py's default model


# -- the three variants -------------------------------------------------------------------------
@dataclasses.dataclass
class Setup:
    cfg: lm_model.Config
    mesh: jax.sharding.Mesh
    x: jax.Array
    y: jax.Array
    decode_batch: int
    vocab: int  # characters that may be sampled

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())


def fresh_nnxfn(s: Setup) -> tuple[tp.Any, tp.Any]:
    """A fresh nnxfn model + optimizer, created sharded (as train_lm.py does)."""
    nnx = nnxfn

    def make() -> lm_model.GPT:
        return lm_model.GPT(s.cfg, rngs=nnx.Rngs(params=SEED, dropout=SEED + 1))

    with nnx.logical_axis_rules(lm_model.RULES):
        model = nnx.jit(make, out_shardings=nnx.get_named_sharding(nnx.eval_shape(make), s.mesh))()
        optimizer = nnx.Optimizer(model, lm_model.optimizer_tx(3e-3, 10, 1000), wrt=nnx.Param)
    return model, optimizer


class Variant:
    """One way of running the train and decode steps. `train()` returns the loss; `lower()`
    the train step's Lowered; `prepare_decode(values)` makes a decoding model from `values`
    (a pure dict); `decode()` runs one decode step; `reset_decode()` rewinds its caches."""

    name: str

    def prepare_decode(self, values: dict) -> None:
        raise NotImplementedError

    def train(self) -> jax.Array:
        raise NotImplementedError

    def lower(self) -> tp.Any:
        raise NotImplementedError

    def decode(self) -> jax.Array:
        raise NotImplementedError

    def reset_decode(self) -> None:
        raise NotImplementedError


def _rewind(model: tp.Any) -> None:
    """Back to position 0. The caches' arrays stay (in the layout the last step gave them, so
    every variant runs its decode step on the same layouts); what they hold is masked out."""
    model.position[...] = model.position[...] * 0
    model.blocks.attn.cache_index[...] = model.blocks.attn.cache_index[...] * 0


def _first_tokens(s: Setup) -> jax.Array:
    return jax.device_put(np.arange(s.decode_batch, dtype=np.int32)[:, None] % s.vocab, s.replicated)


class ModuleVariant(Variant):
    """nnxfn or Flax NNX: `nnx.jit` of the step functions, called on the Modules."""

    def __init__(
        self, name: str, s: Setup, nnx: tp.Any, mod: types.ModuleType, model: tp.Any, optimizer: tp.Any
    ):
        self.name, self.s, self.nnx, self.mod = name, s, nnx, mod
        self.model, self.optimizer = model, optimizer
        self.step = nnx.jit(mod.train_step, donate_argnums=(0, 1))
        self.model.train()
        self.decoder: tp.Any = None

    def train(self) -> jax.Array:
        return self.step(self.model, self.optimizer, self.s.x, self.s.y)

    def lower(self) -> tp.Any:
        return self.step.lower(self.model, self.optimizer, self.s.x, self.s.y)

    def prepare_decode(self, values: dict) -> None:
        """A second model with `values` (a pure dict), in eval mode, with caches."""
        nnx, s = self.nnx, self.s
        with _no_eager_sharding(nnx):
            model = self.mod.GPT(s.cfg, rngs=nnx.Rngs(0))
        _load(nnx, model, values)
        model.eval()
        nnx.jit(lambda m: m.init_cache(s.decode_batch, s.cfg.length))(model)
        fn = nnx.jit(self.mod.decode_step, static_argnums=(4, 5))
        self.decoder, self.token = model, _first_tokens(s)
        self.key, self.temperature = jax.random.key(7), jnp.float32(1.0)
        self.decode_fn = fn
        self.reset_decode()

    def reset_decode(self) -> None:
        _rewind(self.decoder)
        self.token = _first_tokens(self.s)

    def decode(self) -> jax.Array:
        self.token = self.decode_fn(self.decoder, self.token, self.key, self.temperature, 20, self.s.vocab)
        return self.token


class RawVariant(Variant):
    """`jax.jit` of pure functions over `nnx.split` states (nnxfn's merge runs only while tracing)."""

    name = "raw"

    def __init__(self, s: Setup, model: tp.Any, optimizer: tp.Any):
        nnx = nnxfn
        self.s = s
        model.train()
        graphdef, self.state = nnx.split((model, optimizer))

        def train_step(state: tp.Any, x: jax.Array, y: jax.Array) -> tuple[jax.Array, tp.Any]:
            model, optimizer = nnx.merge(graphdef, state)
            loss = lm_model.train_step(model, optimizer, x, y)
            return loss, nnx.state((model, optimizer))

        self.step = jax.jit(train_step, donate_argnums=0)

    def train(self) -> jax.Array:
        loss, self.state = self.step(self.state, self.s.x, self.s.y)
        return loss

    def lower(self) -> tp.Any:
        return self.step.lower(self.state, self.s.x, self.s.y)

    def prepare_decode(self, values: dict) -> None:
        nnx, s = nnxfn, self.s
        model = lm_model.GPT(s.cfg, rngs=nnx.Rngs(0))
        _load(nnx, model, values)
        model.eval()
        nnx.jit(lambda m: m.init_cache(s.decode_batch, s.cfg.length))(model)
        self.decode_graphdef = graphdef = nnx.graphdef(model)
        self.decode_state = nnx.state(model)

        def decode_step(state: tp.Any, tokens: jax.Array, key: jax.Array, temperature: jax.Array) -> tuple:
            model = nnx.merge(graphdef, state)
            out = lm_model.decode_step(model, tokens, key, temperature, 20, s.vocab)
            return out, nnx.state(model)

        self.decode_fn = jax.jit(decode_step)
        self.key, self.temperature = jax.random.key(7), jnp.float32(1.0)
        self.reset_decode()

    def reset_decode(self) -> None:
        model = nnxfn.merge(self.decode_graphdef, self.decode_state)
        _rewind(model)
        self.decode_state, self.token = nnxfn.state(model), _first_tokens(self.s)

    def decode(self) -> jax.Array:
        self.token, self.decode_state = self.decode_fn(
            self.decode_state, self.token, self.key, self.temperature
        )
        return self.token


class _no_eager_sharding:
    """Flax places annotated Variables on a mesh when they are made (and refuses without one);
    the benchmark builds Flax models on the host and then loads nnxfn's sharded values."""

    def __init__(self, nnx: tp.Any):
        self.ctx = nnx.use_eager_sharding(False) if hasattr(nnx, "use_eager_sharding") else None

    def __enter__(self) -> None:
        if self.ctx is not None:
            self.ctx.__enter__()

    def __exit__(self, *exc: tp.Any) -> None:
        if self.ctx is not None:
            self.ctx.__exit__(*exc)


def _load(nnx: tp.Any, node: tp.Any, values: dict) -> None:
    """Put `values` (a pure dict of arrays, already on the mesh) into `node`'s Variables."""
    state = nnx.state(node)
    replaced = state.replace_by_pure_dict(values)
    nnx.update(node, replaced if replaced is not None else state)


def build(name: str, s: Setup) -> Variant:
    """A never-called variant from fresh values (all variants get identical ones)."""
    model, optimizer = fresh_nnxfn(s)
    if name == "nnxfn":
        return ModuleVariant("nnxfn", s, nnxfn, lm_model, model, optimizer)
    if name == "raw":
        return RawVariant(s, model, optimizer)
    from flax import nnx as fnnx

    fmod = flax_model_module()
    with _no_eager_sharding(fnnx):
        fmodel = fmod.GPT(s.cfg, rngs=fnnx.Rngs(0))
        foptimizer = fnnx.Optimizer(fmodel, lm_model.optimizer_tx(3e-3, 10, 1000), wrt=fnnx.Param)
    _load(fnnx, fmodel, nnxfn.state(model).to_pure_dict())
    _load(fnnx, foptimizer, nnxfn.state(optimizer).to_pure_dict())
    return ModuleVariant("flax", s, fnnx, fmod, fmodel, foptimizer)


# -- measurements --------------------------------------------------------------------------------
def check_same_numbers(variants: dict[str, Variant], steps: int = 2) -> dict[str, list[float]]:
    losses = {name: [float(v.train()) for _ in range(steps)] for name, v in variants.items()}
    for name, got in losses.items():
        if not np.allclose(got, losses["raw"], rtol=1e-5, atol=1e-6):
            raise AssertionError(f"{name}'s losses {got} differ from raw JAX's {losses['raw']}")
    return losses


def check_same_tokens(variants: dict[str, Variant], steps: int) -> None:
    seqs = {}
    for name, v in variants.items():
        v.reset_decode()
        seqs[name] = np.concatenate([np.asarray(v.decode()) for _ in range(steps)], axis=1)
        v.reset_decode()
    for name, got in seqs.items():
        if not np.array_equal(got, seqs["raw"]):
            raise AssertionError(f"{name} decoded other tokens than raw JAX")


def train_times(variants: dict[str, Variant], steps: int) -> dict[str, list[float]]:
    """Seconds per train step, each waited for; the variants take turns step by step (the
    order rotating), so a change in the machine's load hits them alike. GC off while timing."""
    names = list(variants)
    out: dict[str, list[float]] = {n: [] for n in names}
    with no_gc():
        for r in range(steps):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                t0 = time.perf_counter()
                jax.block_until_ready(variants[name].train())
                out[name].append(time.perf_counter() - t0)
    return out


def decode_times(variants: dict[str, Variant], reps: int, calls: int) -> dict[str, list[float]]:
    """Seconds per decode step: per round and variant, `calls` chained steps from a rewound
    cache, waited for at the end (the order rotating between rounds)."""
    names = list(variants)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            v = variants[name]
            v.reset_decode()
            with no_gc():
                t0 = time.perf_counter()
                for _ in range(calls):
                    res = v.decode()
                jax.block_until_ready(res)
                out[name].append((time.perf_counter() - t0) / calls)
    return out


def first_calls(names: list[str], s: Setup, reps: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            v = build(name, s)  # building is not timed
            with no_gc():
                t0 = time.perf_counter()
                jax.block_until_ready(v.train())
                samples[name].append(time.perf_counter() - t0)
            del v
            gc.collect()
    return {n: median(x) for n, x in samples.items()}


def compiled(variants: dict[str, Variant]) -> tuple[dict[str, dict[str, int]], dict[str, bool]]:
    """The train step's `memory_analysis()` per variant, and whether its compiled program has
    the same instructions as raw JAX's (names, source locations and order aside)."""
    memory, programs = {}, {}
    for name, v in variants.items():
        executable = v.lower().compile()
        analysis = executable.memory_analysis()
        memory[name] = {f: int(getattr(analysis, f, 0) or 0) for f in MEMORY_FIELDS}
        programs[name] = _instructions(executable.as_text())
    return memory, {name: p == programs["raw"] for name, p in programs.items()}


def _instructions(hlo: str) -> collections.Counter:
    out: collections.Counter = collections.Counter()
    for line in hlo.splitlines():
        line = line.strip()
        if " = " not in line or line.startswith("HloModule"):
            continue
        line = re.sub(r", metadata=\{.*?\}(?=,|$)", "", line)
        line = re.sub(r"%[\w.\-]+", "%", line)  # value names
        line = re.sub(r"\b([a-z_\-]+)\.\d+\b", r"\1", line)  # numbered computation names
        out[re.sub(r"stack_frame_id=\d+", "", line)] += 1
    return out


def run(args: argparse.Namespace, log: tp.Callable[[str], None]) -> dict[str, tp.Any]:
    if jax.device_count() < args.devices:
        raise SystemExit(
            f"--devices {args.devices}: JAX has {jax.device_count()}; run this file as a program"
        )
    mesh = train_lm.make_mesh(args.devices, args.model_parallel)
    cfg = config(args)
    corpus = train_lm.Corpus(train_lm.load_text(), cfg.vocab)
    starts = train_lm.epoch_windows(len(corpus.train), cfg.length, args.batch_size, SEED, 0)[
        : args.batch_size
    ]
    x, y = train_lm.windows(corpus.train, starts, cfg.length)
    data = NamedSharding(mesh, P("data"))
    s = Setup(
        cfg, mesh, jax.device_put(x, data), jax.device_put(y, data), args.decode_batch, len(corpus.chars)
    )
    names = ["raw", "nnxfn"] + ([] if args.no_flax or not _has_flax() else ["flax"])
    log(f"building {names} on mesh {dict(mesh.shape)}")
    variants = {n: build(n, s) for n in names}
    values = nnxfn.state(fresh_nnxfn(s)[0]).to_pure_dict()
    for v in variants.values():
        v.prepare_decode(values)

    log("memory")
    mem, same_program = compiled(variants)
    log("checking that the variants compute the same losses and tokens")
    losses = check_same_numbers(variants)
    check_same_tokens(variants, min(8, cfg.length))
    for v in variants.values():  # warm-up: any second-call compile happens here
        jax.block_until_ready(v.train())
        v.reset_decode()
        jax.block_until_ready(v.decode())
    log("train steps")
    train = train_times(variants, args.train_steps)
    log("decode steps")
    decode = decode_times(variants, args.reps, min(args.decode_steps, cfg.length))
    log("first calls")
    first = (
        first_calls(names, s, args.first_call_reps)
        if args.first_call_reps
        else dict.fromkeys(names, math.nan)
    )
    tokens = args.batch_size * cfg.length
    results: dict[str, tp.Any] = {
        "devices": args.devices,
        "mesh": dict(mesh.shape),
        "config": dataclasses.asdict(cfg),
        "batch": args.batch_size,
        "decode_batch": args.decode_batch,
        "losses": losses,
        "same_program_as_raw": same_program,
        "variants": {},
    }
    for n in names:
        results["variants"][n] = {
            "train_step_ms": median(train[n]) * 1e3,
            "train_tokens_per_s": tokens / median(train[n]),
            "decode_step_ms": median(decode[n]) * 1e3,
            "decode_tokens_per_s": args.decode_batch / median(decode[n]),
            "first_call_s": first[n],
            "memory": mem[n],
        }
    raw = results["variants"]["raw"]
    for row in results["variants"].values():
        row["train_vs_raw"] = row["train_tokens_per_s"] / raw["train_tokens_per_s"]
        row["decode_vs_raw"] = row["decode_tokens_per_s"] / raw["decode_tokens_per_s"]
        row["first_call_vs_raw"] = row["first_call_s"] / raw["first_call_s"]
    return results


def report(r: dict[str, tp.Any]) -> str:
    c = r["config"]
    lines = [
        f"GPT width {c['dim']}, depth {c['depth']}, context {c['length']}; train batch {r['batch']}, "
        f"decode batch {r['decode_batch']}; {r['devices']} device(s), mesh {r['mesh']}",
        "",
        "| variant | train tokens/s | decode tokens/s | first call | temp | arguments | outputs | aliased |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, v in r["variants"].items():
        m = v["memory"]
        lines.append(
            f"| {name} | {v['train_tokens_per_s']:,.0f} ({v['train_vs_raw']:.2f}×) "
            f"| {v['decode_tokens_per_s']:,.0f} ({v['decode_vs_raw']:.2f}×) "
            f"| {_seconds(v['first_call_s'], v['first_call_vs_raw'])} "
            f"| {_kib(m['temp_size_in_bytes'])} | {_kib(m['argument_size_in_bytes'])} "
            f"| {_kib(m['output_size_in_bytes'])} | {_kib(m['alias_size_in_bytes'])} |"
        )
    same = ", ".join(
        f"{n}: {'yes' if ok else 'no'}" for n, ok in r["same_program_as_raw"].items() if n != "raw"
    )
    lines.append("\n(ratios: to raw JAX; memory: the train step's `memory_analysis()`, per device)")
    lines.append(f"compiled train step has the same HLO instructions as raw JAX's: {same}")
    return "\n".join(lines)


def _seconds(s: float, ratio: float) -> str:
    return "—" if math.isnan(s) else f"{s:.2f} s ({ratio:.2f}×)"


def _kib(n: int) -> str:
    return f"{n / 1024:,.1f} KiB"


def main(
    argv: tp.Sequence[str] | None = None, log: tp.Callable[[str], None] | None = None
) -> dict[str, tp.Any]:
    args = parse_args(argv)
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    results = run(args, log)
    text = report(results)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
