"""nnxfn benchmarks: one command, markdown tables.

    .venv/bin/python benchmarks/run.py            # full run (several minutes)
    .venv/bin/python benchmarks/run.py --quick    # smoke run (well under a minute)
    .venv/bin/python benchmarks/run.py --json out.json --depths 8,128

See benchmarks/README.md for what each number means. A benchmark measures;
it never fails because a target is missed (it fails only if the variants do
not compute the same losses).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import typing as tp

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import jax  # noqa: E402

from benchmarks import models, pytree, split_merge, train_step  # noqa: E402

TARGETS = {
    "step": 1.2,  # nnxfn.jit train step / raw JAX, median, every depth
    "split_merge": 2.0,  # nnxfn split+merge / jax.tree_util flatten+unflatten
    "first_call": 1.2,  # trace + compile + first run / raw JAX
    "p99_over_p50": 2.0,
    "pytree": 1.5,  # a Module as a plain pytree / its Equinox twin (roundtrip and jax.jit call)
}


# -- configuration ------------------------------------------------------------------------
def parse_args(argv: tp.Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small, fast smoke run")
    p.add_argument("--depths", type=_ints, help="comma-separated depths (default 2,8,32,128; quick 2,8)")
    p.add_argument("--sizes", type=_ints, help="Variables for split+merge (default 10..10000)")
    p.add_argument("--blocks", type=_ints, help="blocks of the pytree model (default 64; quick 8)")
    p.add_argument("--reps", type=int, help="interleaved rounds per measurement")
    p.add_argument("--first-call-reps", type=int, help="fresh compiles per variant")
    p.add_argument("--target-ms", type=float, help="about how long one round of raw JAX takes")
    p.add_argument("--no-flax", action="store_true", help="skip the flax.nnx columns")
    p.add_argument("--no-eqx", action="store_true", help="skip the Equinox column")
    p.add_argument(
        "--donate", action="store_true", help="also run raw JAX and nnxfn with donated state buffers"
    )
    p.add_argument(
        "--skip",
        type=lambda s: set(s.split(",")),
        default=set(),
        help="sections to skip: step,first_call,memory,split_merge,pytree",
    )
    p.add_argument("--json", help="also write all results to this JSON file")
    args = p.parse_args(argv)
    quick = args.quick
    args.depths = args.depths or ([2, 8] if quick else [2, 8, 32, 128])
    args.sizes = args.sizes or ([10, 100, 1000] if quick else [10, 100, 1000, 10000])
    args.blocks = args.blocks or ([8] if quick else [64])
    args.reps = args.reps or (3 if quick else 10)
    args.first_call_reps = args.first_call_reps or (1 if quick else 3)
    args.target_ms = args.target_ms or (5.0 if quick else 40.0)
    return args


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t]


def variants_for(args: argparse.Namespace) -> dict[str, tp.Callable[..., models.Runner]]:
    variants = models.available(include_flax=not args.no_flax, include_eqx=not args.no_eqx)
    if args.donate:
        variants["raw (donate)"] = lambda d, **k: models.build_raw(d, donate=True, **k)
        variants["nnxfn (donate)"] = lambda d, **k: models.build_nnxfn(d, donate=True, **k)
    return variants


# -- running ----------------------------------------------------------------------------
def run(args: argparse.Namespace, log: tp.Callable[[str], None] = print) -> dict[str, tp.Any]:
    variants = variants_for(args)
    results: dict[str, tp.Any] = {
        "machine": {
            "python": platform.python_version(),
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_at_start": os.getloadavg()[0],
        },
        "config": {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(args).items()},
        "variants": list(variants),
        "step": [],
        "first_call": [],
        "memory": [],
        "split_merge": [],
        "pytree": [],
    }
    t_start = time.perf_counter()
    for depth in args.depths:
        runners = {name: build(depth) for name, build in variants.items()}
        if "step" not in args.skip:
            log(f"[step] depth {depth} ...")
            results["step"].append(
                train_step.step_times(
                    depth,
                    runners,
                    reps=args.reps,
                    target_s=args.target_ms / 1e3,
                    max_calls=200 if args.quick else 1000,
                )
            )
        if "memory" not in args.skip:
            log(f"[memory] depth {depth} ...")
            results["memory"].append(train_step.compiled_memory(depth, runners))
        del runners
        if "first_call" not in args.skip:
            log(f"[first call] depth {depth} ...")
            results["first_call"].append(
                train_step.first_call_times(depth, variants, reps=args.first_call_reps)
            )
    if "split_merge" not in args.skip:
        for n in args.sizes:
            log(f"[split+merge] {n} Variables ...")
            results["split_merge"].append(
                split_merge.run(
                    n, reps=args.reps, target_s=args.target_ms / 4e3, include_flax=not args.no_flax
                )
            )
    if "pytree" not in args.skip:
        for n in args.blocks:
            log(f"[pytree] {n} blocks ...")
            results["pytree"].append(
                pytree.run(
                    n,
                    reps=args.reps,
                    target_s=args.target_ms / 4e3,
                    include_flax=not args.no_flax,
                    include_eqx=not args.no_eqx,
                )
            )
    results["seconds"] = time.perf_counter() - t_start
    results["machine"]["load_average_at_end"] = os.getloadavg()[0]
    return results


# -- reporting ----------------------------------------------------------------------------
def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _us(x: float) -> str:
    return f"{x:,.0f} µs" if x >= 100 else f"{x:,.1f} µs"


def _bytes(x: int) -> str:
    return f"{x / 1024:,.1f} KiB"


def _mark(ok: bool) -> str:
    return "" if ok else " ✗"


def report(results: dict[str, tp.Any]) -> str:
    out: list[str] = []
    names = results["variants"]
    m = results["machine"]
    out.append(
        f"nnxfn benchmarks — jax {m['jax']} ({m['backend']}, {m['cpus']} CPUs), "
        f"Python {m['python']}, {results['seconds']:.0f} s, "
        f"load average {m['load_average_at_start']:.1f} → {m['load_average_at_end']:.1f}\n"
    )

    if results["step"]:
        out.append("### Train step: median µs per step (each call waited for), ratio to raw JAX\n")
        rows = []
        for r in results["step"]:
            v = r["variants"]
            row = [str(r["depth"])]
            for n in names:
                cell = f"{_us(v[n]['p50_us'])} ({v[n]['ratio']:.2f}×)"
                if n == "nnxfn":
                    cell += _mark(v[n]["ratio"] <= TARGETS["step"])
                row.append(cell)
            rows.append(row)
        out.append(_table(["depth"] + names, rows))
        out.append(
            "\n### Train step, async dispatch: µs per step over back-to-back calls, ratio to raw JAX\n"
        )
        rows = [
            [str(r["depth"])]
            + [f"{_us(r['variants'][n]['async_us'])} ({r['variants'][n]['async_ratio']:.2f}×)" for n in names]
            for r in results["step"]
        ]
        out.append(_table(["depth"] + names, rows))
        out.append("\n### Train step latency: p50 / p99 µs (p99 ÷ p50)\n")
        rows = []
        for r in results["step"]:
            v = r["variants"]
            rows.append(
                [str(r["depth"])]
                + [
                    f"{v[n]['p50_us']:,.0f} / {v[n]['p99_us']:,.0f} ({v[n]['p99_over_p50']:.2f})"
                    + (_mark(v[n]["p99_over_p50"] <= TARGETS["p99_over_p50"]) if n == "nnxfn" else "")
                    for n in names
                ]
            )
        out.append(_table(["depth"] + names, rows))
        exact = all(all(r["losses_bitwise_equal"].values()) for r in results["step"])
        out.append(
            f"\nLosses of the first steps bit-identical to raw JAX in every variant: "
            f"{'yes' if exact else 'no (within rtol 2e-5)'}."
        )
        samples = ", ".join(f"{n}: {results['step'][-1]['variants'][n]['samples']}" for n in names)
        out.append(f"\n(samples per variant at depth {results['step'][-1]['depth']}: {samples})")

    if results["first_call"]:
        out.append("\n### First call (trace + compile + run): seconds, ratio to raw JAX\n")
        rows = []
        for r in results["first_call"]:
            v = r["variants"]
            rows.append(
                [str(r["depth"])]
                + [
                    f"{v[n]['seconds']:.2f} s ({v[n]['ratio']:.2f}×)"
                    + (_mark(v[n]["ratio"] <= TARGETS["first_call"]) if n == "nnxfn" else "")
                    for n in names
                ]
            )
        out.append(_table(["depth"] + names, rows))

    if results["memory"]:
        out.append(
            "\n### Compiled memory of the train step (`memory_analysis()`): temp / arguments / outputs / aliased\n"
        )
        rows = []
        for r in results["memory"]:
            raw = r["variants"].get("raw") or {}
            for n in names:
                mem = r["variants"].get(n)
                if not mem or "error" in mem:
                    rows.append(
                        [
                            str(r["depth"]),
                            n,
                            "n/a",
                            "n/a",
                            "n/a",
                            "n/a",
                            (mem or {}).get("error", "no lower()"),
                        ]
                    )
                    continue
                same = "yes" if mem["temp_size_in_bytes"] == raw.get("temp_size_in_bytes") else "no"
                rows.append(
                    [
                        str(r["depth"]),
                        n,
                        _bytes(mem["temp_size_in_bytes"]),
                        _bytes(mem["argument_size_in_bytes"]),
                        _bytes(mem["output_size_in_bytes"]),
                        _bytes(mem["alias_size_in_bytes"]),
                        same,
                    ]
                )
        out.append(
            _table(["depth", "variant", "temp", "arguments", "outputs", "aliased", "temp = raw?"], rows)
        )

    if results["split_merge"]:
        sm_names = list(results["split_merge"][0]["variants"])
        out.append(
            "\n### split + merge: median µs per call, ratio to `jax.tree_util` flatten+unflatten of the same leaves\n"
        )
        rows = []
        for r in results["split_merge"]:
            v = r["variants"]
            rows.append(
                [f"{r['n_variables']:,}"]
                + [
                    f"{_us(v[n]['us'])} ({v[n]['ratio']:.1f}×)"
                    + (_mark(v[n]["ratio"] <= TARGETS["split_merge"]) if n == "nnxfn split+merge" else "")
                    for n in sm_names
                ]
            )
        out.append(_table(["Variables"] + sm_names, rows))

    if results["pytree"]:
        base = results["pytree"][0]["baseline"]
        out.append(
            f"\n### A Module as a plain pytree: median µs, ratio to the {base} model of the same structure\n"
        )
        libs = [n.split(" ")[0] for n in results["pytree"][0]["variants"] if n.endswith(" roundtrip")]
        rows = []
        for r in results["pytree"]:
            v = r["variants"]
            for kind in ("roundtrip", "jax.jit"):
                rows.append(
                    [f"{r['blocks']}", kind]
                    + [
                        f"{_us(v[f'{lib} {kind}']['us'])} ({v[f'{lib} {kind}']['ratio']:.2f}×)"
                        + (_mark(v[f"{lib} {kind}"]["ratio"] <= TARGETS["pytree"]) if lib == "nnxfn" else "")
                        for lib in libs
                    ]
                )
        out.append(_table(["blocks", "measurement"] + libs, rows))

    out.append(
        "\n✗ = misses its target (step ≤ 1.2×, first call ≤ 1.2×, p99 ≤ 2× p50, split+merge ≤ 2×, "
        "pytree ≤ 1.5× Equinox)."
    )
    return "\n".join(out)


def check_finite(results: dict[str, tp.Any]) -> bool:
    ratios = [
        v["ratio"]
        for sec in ("step", "first_call", "split_merge", "pytree")
        for r in results[sec]
        for v in r["variants"].values()
    ]
    return all(math.isfinite(x) and x > 0 for x in ratios)


def main(
    argv: tp.Sequence[str] | None = None, log: tp.Callable[[str], None] | None = None
) -> dict[str, tp.Any]:
    args = parse_args(argv)
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    results = run(args, log)
    text = report(results)
    print(text)
    results["report"] = text
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    return results


if __name__ == "__main__":
    main()
