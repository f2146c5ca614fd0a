"""Timing helpers: interleaved repetitions with the garbage collector off."""

from __future__ import annotations

import contextlib
import gc
import time
import typing as tp

import jax
import numpy as np


@contextlib.contextmanager
def no_gc() -> tp.Iterator[None]:
    """Collect first, then keep the collector off for the timed block."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def percentile(samples: tp.Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples, dtype=np.float64), q))


def median(samples: tp.Sequence[float]) -> float:
    return percentile(samples, 50)


def calibrate(fn: tp.Callable[[], tp.Any], target_s: float, lo: int, hi: int, wait: bool = True) -> int:
    """How many calls of `fn` take about `target_s` (between lo and hi)."""
    n = 3
    with no_gc():
        t0 = time.perf_counter()
        for _ in range(n):
            res = fn()
            if wait:
                jax.block_until_ready(res)
        per = (time.perf_counter() - t0) / n
    return int(min(hi, max(lo, round(target_s / max(per, 1e-9)))))


def interleaved(
    fns: dict[str, tp.Callable[[], tp.Any]],
    reps: int,
    calls: int | dict[str, int],
    *,
    block_each: bool = True,
    wait: bool = True,
) -> dict[str, list[float]]:
    """Seconds per call of each fn, measured in `reps` interleaved rounds.

    Each round runs every fn `calls` times (the order rotates between rounds,
    so no fn always goes first). With `block_each`, every call is timed on its
    own and waited for (`jax.block_until_ready`): one sample per call, which
    gives latency percentiles. Otherwise each round gives one sample: the
    average over `calls` back-to-back calls with a single wait at the end
    (throughput with JAX's async dispatch). `wait=False` never waits: for
    functions that start no device work (e.g. `split`/`merge`), where waiting
    would only flatten the result as a pytree inside the timed block.
    """
    names = list(fns)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(reps):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            fn = fns[name]
            n = calls[name] if isinstance(calls, dict) else calls
            out = samples[name]
            with no_gc():
                if block_each:
                    for _ in range(n):
                        t0 = time.perf_counter()
                        jax.block_until_ready(fn())
                        out.append(time.perf_counter() - t0)
                else:
                    t0 = time.perf_counter()
                    for _ in range(n):
                        res = fn()
                    if wait:
                        jax.block_until_ready(res)
                    out.append((time.perf_counter() - t0) / n)
    return samples
