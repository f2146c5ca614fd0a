"""examples/sharded_transformer.py trains on its simulated 8-device mesh."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "examples" / "sharded_transformer.py"


def test_sharded_transformer_example_runs_briefly():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # the script sets it
    env["JAX_PLATFORMS"] = "cpu"
    res = subprocess.run(
        [sys.executable, str(SCRIPT), "--steps", "3"], env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-4000:]
    out = res.stdout
    assert "1 process(es), 8 devices, mesh {'data': 2, 'model': 4}" in out
    # every parameter's layout is printed; tensor-parallel ones are split 4 ways
    assert re.search(
        r"blocks\.0\.up\.kernel\s+\(32, 64\) P\(None, 'model'\)\s+shard \(32, 16\)"
        r"\s+4 block\(s\) x 2 copies",
        out,
    )
    assert re.search(r"embed\.embedding\s+\(64, 32\) P\('model',\)", out)
    assert re.search(r"norm\.scale\s+\(32,\) P\(\)\s+shard \(32,\)\s+1 block\(s\) x 8 copies", out)
    assert "device 5: [:, 16:32]" in out
    assert re.search(r"its Adam moment:\s+\(32, 64\) P\(None, 'model'\)", out)
    losses = [float(x) for x in re.findall(r"step\s+\d+\s+loss ([0-9.]+)", out)]
    assert len(losses) == 2 and losses[-1] < losses[0]
    assert "layouts unchanged: True" in out
