"""Train-step benchmarks: per-step time, first call, compiled memory."""

from __future__ import annotations

import gc
import time
import typing as tp

import jax

from benchmarks import models
from benchmarks.timing import calibrate, interleaved, median, no_gc, percentile


def step_times(
    depth: int,
    runners: dict[str, models.Runner],
    *,
    reps: int,
    target_s: float,
    max_calls: int,
    check_steps: int = 3,
) -> dict[str, tp.Any]:
    """Per-step latency (p50/p99, each call waited for) and async throughput.

    First checks that every runner computes the same losses as `raw`.
    """
    losses = models.check_same_math(runners, steps=check_steps)
    for r in runners.values():  # warm up past any second-call retrace
        jax.block_until_ready(r.step())
    n = calibrate(runners["raw"].step, target_s, lo=5, hi=max_calls)
    fns = {name: r.step for name, r in runners.items()}
    # Fewer calls for the slow variants so one round takes about the same time.
    per = {name: _rough(fn) for name, fn in fns.items()}
    calls = {name: max(3, min(n, round(n * per["raw"] / per[name]))) for name in fns}
    latency = interleaved(fns, reps, calls, block_each=True)
    throughput = interleaved(fns, reps, calls, block_each=False)
    rows = {}
    for name in fns:
        lat = latency[name]
        rows[name] = {
            "p50_us": median(lat) * 1e6,
            "p99_us": percentile(lat, 99) * 1e6,
            "samples": len(lat),
            "async_us": median(throughput[name]) * 1e6,
        }
    for row in rows.values():
        row["ratio"] = row["p50_us"] / rows["raw"]["p50_us"]
        row["async_ratio"] = row["async_us"] / rows["raw"]["async_us"]
        row["p99_over_p50"] = row["p99_us"] / row["p50_us"]
    bitwise = {name: got == losses["raw"] for name, got in losses.items()}
    return {"depth": depth, "variants": rows, "losses": losses, "losses_bitwise_equal": bitwise}


def _rough(fn: tp.Callable[[], tp.Any]) -> float:
    best = float("inf")
    with no_gc():
        for _ in range(3):
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            best = min(best, time.perf_counter() - t0)
    return best


def first_call_times(
    depth: int, variants: dict[str, tp.Callable[..., models.Runner]], *, reps: int
) -> dict[str, tp.Any]:
    """Seconds for the first call of a never-called step (trace + compile + run)."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(reps):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            runner = variants[name](depth)  # a never-called step; building it is not timed
            with no_gc():
                t0 = time.perf_counter()
                jax.block_until_ready(runner.step())
                samples[name].append(time.perf_counter() - t0)
            del runner
            gc.collect()
    rows = {name: {"seconds": median(s)} for name, s in samples.items()}
    for row in rows.values():
        row["ratio"] = row["seconds"] / rows["raw"]["seconds"]
    return {"depth": depth, "variants": rows}


_MEMORY_FIELDS = (
    "temp_size_in_bytes",
    "argument_size_in_bytes",
    "output_size_in_bytes",
    "alias_size_in_bytes",
    "generated_code_size_in_bytes",
)


def compiled_memory(depth: int, runners: dict[str, models.Runner]) -> dict[str, tp.Any]:
    """`lower(...).compile().memory_analysis()` of each variant's train step."""
    rows: dict[str, tp.Any] = {}
    for name, runner in runners.items():
        if runner.lower is None:
            rows[name] = None
            continue
        try:
            analysis = runner.lower().compile().memory_analysis()
        except Exception as e:  # noqa: BLE001 - report, do not fail the run
            rows[name] = {"error": f"{type(e).__name__}: {e}"[:200]}
            continue
        if analysis is None:
            rows[name] = None
            continue
        rows[name] = {f: int(getattr(analysis, f, 0) or 0) for f in _MEMORY_FIELDS}
    return {"depth": depth, "variants": rows}
