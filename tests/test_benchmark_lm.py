"""benchmarks/lm.py runs end to end on a tiny GPT (not a performance test)."""

from __future__ import annotations

import json
import math
import os
import sys

import numpy as np
import pytest

pytest.importorskip("orbax.checkpoint")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import lm as bench  # noqa: E402


def test_quick_run_measures_every_variant(tmp_path, capsys):
    out = tmp_path / "lm.json"
    argv = ["--quick", "--train-steps", "1", "--reps", "1", "--decode-steps", "4", "--first-call-reps", "0"]
    argv += ["--json", str(out)]
    results = bench.main(argv, log=lambda _: None)

    names = list(results["variants"])
    assert names[:2] == ["raw", "nnxfn"] and set(names) <= {"raw", "nnxfn", "flax"}
    for name, row in results["variants"].items():
        for key in ("train_tokens_per_s", "decode_tokens_per_s"):
            assert math.isfinite(row[key]) and row[key] > 0, (name, key)
        assert math.isnan(row["first_call_s"])  # --first-call-reps 0: not measured
    assert results["variants"]["raw"]["train_vs_raw"] == 1.0
    # Same losses (the harness checks it before timing), and the step trains.
    losses = results["losses"]
    for got in losses.values():
        np.testing.assert_allclose(got, losses["raw"], rtol=1e-5)
    assert all(math.isfinite(x) for x in losses["raw"])
    # nnxfn's jitted step compiles to the raw-JAX program's buffers: nothing copied or kept extra.
    assert results["variants"]["nnxfn"]["memory"] == results["variants"]["raw"]["memory"]
    assert results["variants"]["raw"]["memory"]["alias_size_in_bytes"] > 0  # the state is donated
    assert results["same_program_as_raw"]["nnxfn"] is True

    printed = capsys.readouterr().out
    assert "| variant | train tokens/s |" in printed and "| raw |" in printed and "| nnxfn |" in printed
    assert "same HLO instructions as raw JAX's: nnxfn: yes" in printed
    assert (
        json.loads(out.read_text())["variants"]["nnxfn"]["memory"] == results["variants"]["nnxfn"]["memory"]
    )


class _Fixed(bench.Variant):
    def __init__(self, losses, tokens):
        self.losses, self.tokens = iter(losses), tokens

    def train(self):
        return np.float32(next(self.losses))

    def reset_decode(self):
        self.i = 0

    def decode(self):
        self.i += 1
        return np.array([[self.tokens[self.i - 1]]])


def test_checks_catch_variants_that_compute_other_numbers():
    same = {"raw": _Fixed([3.0, 2.5], [1, 2]), "nnxfn": _Fixed([3.0, 2.5], [1, 2])}
    assert bench.check_same_numbers(same) == {"raw": [3.0, 2.5], "nnxfn": [3.0, 2.5]}
    bench.check_same_tokens(same, 2)
    with pytest.raises(AssertionError, match="nnxfn's losses .* differ from raw JAX"):
        bench.check_same_numbers({"raw": _Fixed([3.0, 2.5], []), "nnxfn": _Fixed([3.0, 2.4], [])})
    with pytest.raises(AssertionError, match="flax decoded other tokens"):
        bench.check_same_tokens({"raw": _Fixed([], [1, 2]), "flax": _Fixed([], [1, 3])}, 2)
