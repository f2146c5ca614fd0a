"""Run a snippet in a fresh process that sees 8 simulated CPU devices.

JAX fixes its device count when it loads, and the test process has loaded it
already, so guides that build meshes run their code in a subprocess. The snippet
asserts what it checks; a failure shows the subprocess's traceback.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

SRC = pathlib.Path(__file__).resolve().parents[2] / "src"


def run_on_8_devices(code: str, timeout: float = 600) -> str:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), str(SRC)) if p)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        text=True,
        capture_output=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"snippet failed:\n{proc.stdout}\n{proc.stderr[-6000:]}"
    return proc.stdout
