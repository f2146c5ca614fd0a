"""SPMD behaviours on a simulated 8-device CPU mesh.

JAX reads XLA_FLAGS once, when it loads, and this pytest process has loaded
it already; so `spmd_checks.py` runs once in a subprocess with
`--xla_force_host_platform_device_count=8` and reports each check as JSON.
"""

from __future__ import annotations

import ast
import json
import os
import pathlib
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).with_name("spmd_checks.py")


def _check_names() -> list[str]:
    tree = ast.parse(SCRIPT.read_text())
    return [
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
        and any(isinstance(d, ast.Name) and d.id == "check" for d in node.decorator_list)
    ]


@pytest.fixture(scope="module")
def results() -> dict:
    """Run the checks in two concurrent subprocesses (they are mostly compile time)."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    names = _check_names()
    groups = [names[0::2], names[1::2]]
    procs = [
        subprocess.Popen(
            [sys.executable, str(SCRIPT), *group],
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for group in groups
    ]
    found: dict = {}
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-4000:]
        found.update(json.loads(out.strip().splitlines()[-1]))
    return found


def test_every_check_ran(results):
    assert sorted(results) == sorted(_check_names()) and len(results) >= 9


@pytest.mark.parametrize("name", _check_names())
def test_on_eight_devices(results, name):
    outcome = results[name]
    assert outcome == "ok", f"{name} failed on the 8-device mesh:\n{outcome}"
