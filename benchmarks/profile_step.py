"""Where does the Python time of one `nnxfn.jit` train step go?

    .venv/bin/python benchmarks/profile_step.py --depth 128 --calls 2000
    .venv/bin/python benchmarks/profile_step.py --depth 8 --split-merge 1000

1. cProfile of `calls` steps (no waiting between calls), summarised by
   source area (nnxfn / jax / optax / other) and the top nnxfn functions.
2. A manual breakdown of one call: `_prepare` (entry cache, gather raw
   values), the compiled call itself (JAX's C++ dispatch; the step's output
   is waited for so compute is excluded from the other parts), and `commit`
   (writing results back), next to `jax.jit` called on the same flat lists.
3. Optionally (`--split-merge N`), cProfile of `split`+`merge` with N Variables.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time
import typing as tp

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import jax  # noqa: E402

from benchmarks import models  # noqa: E402
from benchmarks.timing import median, no_gc  # noqa: E402


def _area(filename: str) -> str:
    for key, name in (
        ("/nnxfn/", "nnxfn"),
        ("/jax/", "jax"),
        ("/jaxlib/", "jax"),
        ("/optax/", "optax"),
        ("benchmarks", "benchmark"),
    ):
        if key in filename:
            return name
    return "builtins/other"


def summarise(prof: cProfile.Profile, calls: int, top: int = 25) -> str:
    stats = pstats.Stats(prof)
    by_area: dict[str, float] = {}
    rows = []
    total = 0.0
    for (filename, line, func), (_, nc, tt, ct, _) in stats.stats.items():  # type: ignore[attr-defined]
        area = _area(filename)
        by_area[area] = by_area.get(area, 0.0) + tt
        total += tt
        if area == "nnxfn":
            short = filename.split("/nnxfn/", 1)[1]
            rows.append((tt, ct, nc, f"{short}:{line}:{func}"))
    out = [f"total profiled time {total:.3f} s = {total / calls * 1e6:,.0f} µs per call (under cProfile)"]
    out.append(
        "self time by area: "
        + ", ".join(
            f"{a} {t / calls * 1e6:,.0f} µs ({t / total:.0%})"
            for a, t in sorted(by_area.items(), key=lambda kv: -kv[1])
        )
    )
    out.append("\ntop nnxfn functions (per step): self µs | cumulative µs | calls per step")
    for tt, ct, nc, name in sorted(rows, reverse=True)[:top]:
        out.append(f"  {tt / calls * 1e6:8.1f} | {ct / calls * 1e6:9.1f} | {nc / calls:8.1f}  {name}")
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(15)
    out.append("\ntop 15 functions overall by self time:\n" + "\n".join(s.getvalue().splitlines()[6:]))
    return "\n".join(out)


def profile_step(depth: int, calls: int) -> str:
    runner = models.build_nnxfn(depth)
    for _ in range(5):
        jax.block_until_ready(runner.step())
    prof = cProfile.Profile()
    with no_gc():
        prof.enable()
        for _ in range(calls):
            out = runner.step()
        jax.block_until_ready(out)
        prof.disable()
    return summarise(prof, calls)


def breakdown(depth: int, reps: int = 200) -> str:
    """Median µs of the parts of one nnxfn call (uses nnxfn internals; reads only)."""
    import nnxfn as nnx
    import optax
    from nnxfn.transforms import boundary

    model = models.make_nnx_model(nnx, depth)
    optimizer = nnx.Optimizer(model, optax.adam(models.LEARNING_RATE), wrt=nnx.Param)
    x, y = models.make_data()
    step = nnx.jit(models.make_train_step(nnx))
    for _ in range(3):
        jax.block_until_ready(step(model, optimizer, x, y))
    raw = models.build_raw(depth)
    for _ in range(3):
        jax.block_until_ready(raw.step())

    parts: dict[str, list[float]] = {
        k: []
        for k in (
            "whole nnxfn call (waited)",
            "_prepare",
            "compiled call (waited)",
            "commit",
            "raw jax.jit step (waited)",
            "jax.jit, same leaves in/out, no work (waited)",
        )
    }
    try:
        jitted = step._jitted(None)
        entry, static, kept, donated, _ = step._prepare((model, optimizer, x, y), {})
        n_leaves = len(kept) + len(donated) + len(entry.others)
        # A plain jax.jit program with the same inputs/outputs, to price the dispatch.
        aux, out_arrays, emitted = jitted(static, kept, donated, entry.others)
        # Trivial program, same number of inputs and outputs: JAX's dispatch floor.
        echo = jax.jit(lambda kept, others: [a + 1 for a in kept])
        jax.block_until_ready(echo(kept, entry.others))
    except Exception as e:  # noqa: BLE001 - internals moved: skip the breakdown
        return f"(breakdown skipped: nnxfn internals changed: {type(e).__name__}: {e})"
    with no_gc():
        for _ in range(reps):
            # Drop the previous round's references first: freeing ~N old device
            # arrays (1-2 µs each) would otherwise land in whichever part
            # happens to release them.
            del entry, static, kept, donated, aux, out_arrays, emitted
            t0 = time.perf_counter()
            jax.block_until_ready(step(model, optimizer, x, y))
            t1 = time.perf_counter()
            entry, static, kept, donated, _ = step._prepare((model, optimizer, x, y), {})
            t2 = time.perf_counter()
            aux, out_arrays, emitted = jitted(static, kept, donated, entry.others)
            jax.block_until_ready((out_arrays, emitted))
            t3 = time.perf_counter()
            boundary.commit(entry, aux.value, out_arrays, emitted)
            t4 = time.perf_counter()
            jax.block_until_ready(raw.step())
            t5 = time.perf_counter()
            jax.block_until_ready(echo(kept, entry.others))
            t6 = time.perf_counter()
            for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)):
                parts[k].append(v)
    lines = [f"depth {depth}: {n_leaves} input leaves, {len(emitted)} emitted leaves; median µs:"]
    lines += [f"  {k:42s} {median(v) * 1e6:9.1f}" for k, v in parts.items()]
    return "\n".join(lines)


def profile_split_merge(n: int, calls: int) -> str:
    from benchmarks import split_merge

    fn = split_merge.functions(n, include_flax=False)["nnxfn split+merge"]
    fn()
    prof = cProfile.Profile()
    with no_gc():
        prof.enable()
        for _ in range(calls):
            fn()
        prof.disable()
    return summarise(prof, calls, top=20)


def main(argv: tp.Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depth", type=int, action="append", help="repeatable; default 8 and 128")
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--split-merge", type=int, default=0, help="also profile split+merge with N Variables")
    p.add_argument("--breakdown-only", action="store_true", help="skip cProfile")
    args = p.parse_args(argv)
    for depth in args.depth or [8, 128]:
        if not args.breakdown_only:
            print(f"\n## nnxfn.jit train step, depth {depth}, {args.calls} calls\n")
            print(profile_step(depth, args.calls))
            print()
        print(breakdown(depth))
    if args.split_merge:
        print(f"\n## split+merge, {args.split_merge} Variables\n")
        print(profile_split_merge(args.split_merge, max(10, 20000 // args.split_merge)))


if __name__ == "__main__":
    main()
