"""The benchmark harness runs end to end on tiny sizes (not a performance test)."""

from __future__ import annotations

import json
import math
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import models, run  # noqa: E402

TINY = [
    "--quick",
    "--depths",
    "2",
    "--sizes",
    "10",
    "--blocks",
    "2",
    "--reps",
    "2",
    "--first-call-reps",
    "1",
    "--target-ms",
    "1",
    "--no-flax",
    "--no-eqx",
]


def test_quick_run_produces_finite_ratios(tmp_path, capsys):
    out = tmp_path / "bench.json"
    results = run.main(TINY + ["--json", str(out)], log=lambda _: None)

    assert results["variants"] == ["raw", "nnxfn"]
    assert run.check_finite(results)
    (step,) = results["step"]
    assert step["depth"] == 2
    assert step["variants"]["raw"]["ratio"] == 1.0
    for row in step["variants"].values():
        assert math.isfinite(row["p50_us"]) and row["p50_us"] > 0
        assert row["p99_us"] >= row["p50_us"]
    # (a) and (b) computed the same losses (the harness asserts it too).
    assert step["losses"]["raw"] == pytest.approx(step["losses"]["nnxfn"], rel=2e-5)
    assert step["losses"]["raw"][-1] < step["losses"]["raw"][0]  # it trains

    (first,) = results["first_call"]
    assert first["variants"]["nnxfn"]["seconds"] > 0
    (mem,) = results["memory"]
    assert mem["variants"]["raw"]["argument_size_in_bytes"] > 0
    # nnxfn's Optimizer also holds a uint32 `step` counter: 4 more bytes in and out.
    extra = (
        mem["variants"]["nnxfn"]["argument_size_in_bytes"] - mem["variants"]["raw"]["argument_size_in_bytes"]
    )
    assert 0 <= extra <= 16
    (sm,) = results["split_merge"]
    assert sm["n_variables"] == 10
    assert math.isfinite(sm["variants"]["nnxfn split+merge"]["ratio"])

    (pt,) = results["pytree"]
    assert pt["blocks"] == 2 and pt["baseline"] == "dict"  # no Equinox column asked for
    assert pt["variants"]["dict roundtrip"]["ratio"] == 1.0
    assert math.isfinite(pt["variants"]["nnxfn jax.jit"]["ratio"])

    printed = capsys.readouterr().out
    assert "| depth | raw | nnxfn |" in printed
    assert "split + merge" in printed
    assert "A Module as a plain pytree" in printed
    saved = json.loads(out.read_text())
    assert saved["step"][0]["variants"]["nnxfn"]["p50_us"] == step["variants"]["nnxfn"]["p50_us"]


def test_same_math_check_catches_a_different_step():
    runners = {"raw": models.build_raw(1), "nnxfn": models.build_raw(1)}
    runners["nnxfn"].step()  # one step ahead: its losses differ
    with pytest.raises(AssertionError, match="differ from raw JAX"):
        models.check_same_math(runners, steps=2)
