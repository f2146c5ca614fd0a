"""examples/equinox_head.py runs briefly and trains both halves."""

import importlib.util
import pathlib
import sys

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "examples" / "equinox_head.py"


def test_equinox_head_example_trains(capsys):
    spec = importlib.util.spec_from_file_location("equinox_head", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        result = module.main(["--steps", "40", "--seed", "1"])
    finally:
        sys.modules.pop(spec.name, None)
    assert result["steps"] == 40
    assert result["last_loss"] < 0.5 * result["first_loss"]
    assert result["encoder_weight_change"] > 0.0
    assert result["encoder_type"] == "MLP"
    assert 0.0 <= result["test_accuracy"] <= 1.0
    assert "Equinox encoder weights moved" in capsys.readouterr().out
