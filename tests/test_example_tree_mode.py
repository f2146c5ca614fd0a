"""examples/train_tree_mode.py: a plain-JAX loop over the Module (jax.jit,
jax.value_and_grad, optax.apply_updates) gives the graph-mode loop's losses."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import jax
import numpy as np
import optax
import pytest

import nnxfn as nnx

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "examples" / "train_tree_mode.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("train_tree_mode", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_tree_mode_loop_matches_the_graph_mode_loop_value_for_value(example):
    x, y = example.data(seed=1)
    tx = optax.adam(1e-2)
    tree_model, tree_losses = example.train_tree_mode(example.MLP(4, 16, 2, nnx.Rngs(1)), tx, x, y, steps=15)
    graph_model, graph_losses = example.train_graph_mode(
        example.MLP(4, 16, 2, nnx.Rngs(1)), tx, x, y, steps=15
    )
    np.testing.assert_allclose(tree_losses, graph_losses, rtol=1e-6, atol=1e-6)
    assert tree_losses[-1] < 0.5 * tree_losses[0]
    assert type(tree_model) is example.MLP
    for (path, a), (_, b) in zip(
        nnx.state(tree_model).flat_state(), nnx.state(graph_model).flat_state(), strict=True
    ):
        np.testing.assert_allclose(
            np.asarray(a[...]), np.asarray(b[...]), rtol=1e-6, atol=1e-6, err_msg=str(path)
        )


def test_main_prints_both_loops(example, capsys):
    tree_losses, graph_losses = example.main(["--steps", "5", "--seed", "2"])
    assert tree_losses == pytest.approx(graph_losses, rel=1e-6, abs=1e-6)
    assert "largest difference between the two loops" in capsys.readouterr().out
    assert isinstance(jax.tree.leaves(example.MLP(4, 8, 2, nnx.Rngs(0)))[0], jax.Array)
