"""examples/train_digits.py (the main job) runs end to end on a tiny budget."""

from __future__ import annotations

import importlib.util
import json
import math
import pathlib
import sys

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "examples" / "train_digits.py"


@pytest.fixture(scope="module")
def train_digits():
    spec = importlib.util.spec_from_file_location("train_digits", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def _argv(out: pathlib.Path, *extra: str) -> list[str]:
    return [
        "--max-steps",
        "5",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--seed",
        "3",
        "--out",
        str(out),
        *extra,
    ]


def test_tiny_run_outputs_and_determinism(train_digits, tmp_path, capsys):
    first = train_digits.main(_argv(tmp_path / "a"))
    out = capsys.readouterr().out

    assert first["steps"] == 5 and first["epochs"] == 1
    for key in (
        "train_loss",
        "train_accuracy",
        "test_loss",
        "test_accuracy",
        "restored_test_loss",
        "restored_test_accuracy",
    ):
        assert math.isfinite(first[key]), key
    assert 0.0 <= first["test_accuracy"] <= 1.0
    assert first["restored_test_accuracy"] == first["test_accuracy"]
    assert first["restored_test_loss"] == first["test_loss"]

    run = tmp_path / "a"
    import nnxfn as nnx

    assert nnx.checkpoint_steps(run / "checkpoints") == [1]  # one per epoch
    assert (run / "checkpoints" / "1" / "state").is_dir()  # an orbax CheckpointManager step
    assert (run / "training_curves.png").stat().st_size > 0
    saved = json.loads((run / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(first))  # metrics.json holds what main returns

    assert "CNN Summary" in out and "Total Parameters" in out  # the nnx.tabulate table...
    assert "┏━" in out and "┃ path" in out and "\x1b[" not in out  # ...drawn by rich, no colours in a pipe
    assert "steps/s" in out and "outputs written to" in out
    assert f"test_accuracy={first['test_accuracy']:.6f}" in out

    second = train_digits.main(_argv(tmp_path / "b", "--no-plot"))
    assert second == first  # same seed -> identical numbers (including the history)
    assert not (tmp_path / "b" / "training_curves.png").exists()


def test_progress_bar_tty_and_pipe(train_digits):
    import io

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    bar = train_digits.ProgressBar(3, "epoch 1/1", stream=tty)
    assert bar.wants_stats() and type(bar.bar).__module__.startswith("tqdm")
    for _ in range(3):
        bar.update({"loss": 0.5, "acc": 0.75})
    bar.close({"loss": 0.5, "acc": 0.75})
    text = tty.getvalue()
    assert "epoch 1/1" in text and "3/3" in text and "step/s" in text  # tqdm's bar
    assert "loss 0.5000 acc 0.7500" in text.splitlines()[-1] or "loss 0.5000" in text

    pipe = io.StringIO()
    bar = train_digits.ProgressBar(3, "epoch 1/1", stream=pipe)
    assert not bar.wants_stats()
    for _ in range(3):
        bar.update()
    bar.close({"loss": 0.5, "acc": 0.75})
    assert pipe.getvalue().count("\n") == 1 and "\r" not in pipe.getvalue()
    assert "epoch 1/1 3/3 loss 0.5000 acc 0.7500" in pipe.getvalue()


def test_resume_continues_to_the_same_result(train_digits, tmp_path, capsys):
    import nnxfn as nnx

    argv = ["--epochs", "4", "--batch-size", "128", "--seed", "5", "--no-plot"]
    whole = train_digits.main([*argv, "--out", str(tmp_path / "whole")])
    stopped = train_digits.main([*argv, "--out", str(tmp_path / "part"), "--stop-after", "2"])
    assert stopped["epochs"] == 2 and nnx.checkpoint_steps(tmp_path / "part" / "checkpoints") == [1, 2]
    capsys.readouterr()
    resumed = train_digits.main([*argv, "--out", str(tmp_path / "part"), "--resume"])
    assert "resumed from" in capsys.readouterr().out
    assert resumed == whole  # same final accuracy, losses and per-epoch history
    # saved every epoch; the manager keeps the last 3
    assert nnx.checkpoint_steps(tmp_path / "part" / "checkpoints") == [2, 3, 4]
    assert nnx.checkpoint_steps(tmp_path / "whole" / "checkpoints") == [2, 3, 4]


def test_bad_flags_exit(train_digits, tmp_path):
    with pytest.raises(SystemExit):
        train_digits.main(["--epochs", "0", "--out", str(tmp_path)])
