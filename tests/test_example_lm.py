"""examples/train_lm.py (the language-model job) and its model file, on tiny configurations."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("orbax.checkpoint")
pytest.importorskip("tqdm")

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
SCRIPT = EXAMPLES / "train_lm.py"
TINY = [
    "--dim", "32", "--heads", "4", "--mlp", "64", "--depth", "2", "--length", "32",
    "--batch-size", "8", "--warmup", "2", "--learning-rate", "1e-2", "--no-plot",
]  # fmt: skip


@pytest.fixture(scope="module")
def train_lm():
    spec = importlib.util.spec_from_file_location("train_lm", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)  # puts examples/ on sys.path for lm_model
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_eight_devices_train_and_parameters_sharded_as_annotated(train_lm, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # the script sets it itself
    env["JAX_PLATFORMS"] = "cpu"
    argv = [*TINY, "--devices", "8", "--max-steps", "20", "--sample-length", "8", "--out", str(tmp_path)]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *argv], env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    m = json.loads((tmp_path / "metrics.json").read_text())

    assert m["devices"] == 8 and m["mesh"] == {"data": 4, "model": 2}
    losses = m["history"]["train_loss"]
    assert len(losses) == 20 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5  # it learns (from ~4.8 nats)
    assert m["val_loss"] < m["history"]["train_loss"][0]
    assert m["restored_val_loss"] == m["val_loss"]  # the sharded checkpoint restores exactly

    # After training, each array is split over the mesh axes its annotation names.
    rules, sizes = dict(train_lm.lm.RULES), m["mesh"]
    for path, layout in m["layouts"].items():
        want = [rules[name] for name in layout["logical"]]
        assert layout["mesh"] == want, path
        assert layout["shard"] == [n // sizes[a] if a else n for n, a in zip(layout["shape"], want)], path
    up = m["layouts"]["blocks.up.kernel"]
    assert up["logical"] == ["layers", "embed", "mlp"] and up["shard"] == [2, 8, 32]
    assert m["layouts"]["embed.embedding"]["mesh"] == ["model", "data"]
    # The printed summary shows it too.
    line = next(x for x in proc.stdout.splitlines() if x.strip().startswith("blocks.up.kernel"))
    assert "(layers, embed, mlp)" in line and "(None, data, model)" in line and "(2, 8, 32)" in line
    assert "mesh {'data': 4, 'model': 2} on 8 device(s)" in proc.stdout
    assert len(m["sample"]) == len("The ") + 8 and (tmp_path / "sample.txt").read_text() == m["sample"] + "\n"


def test_resume_after_10_steps_equals_20_uninterrupted(train_lm, tmp_path, capsys):
    import nnxfn as nnx

    argv = [*TINY, "--max-steps", "20", "--seed", "3", "--sample-length", "6"]
    whole = train_lm.main([*argv, "--out", str(tmp_path / "whole")])
    stopped = train_lm.main([*argv, "--out", str(tmp_path / "part"), "--stop-after", "10"])
    assert stopped["steps"] == 10 and len(stopped["history"]["train_loss"]) == 10
    assert nnx.checkpoint_steps(tmp_path / "part" / "checkpoints") == [10]
    capsys.readouterr()
    resumed = train_lm.main([*argv, "--out", str(tmp_path / "part"), "--resume"])
    assert "resumed from" in capsys.readouterr().out

    assert resumed["history"] == whole["history"]  # every step's loss, and the validation loss
    assert whole["history"]["train_loss"][:10] == stopped["history"]["train_loss"]
    for key in ("val_loss", "restored_val_loss", "sample", "steps", "layouts"):
        assert resumed[key] == whole[key], key
    assert whole["restored_val_loss"] == whole["val_loss"]
    assert nnx.checkpoint_steps(tmp_path / "part" / "checkpoints") == [10, 20]


def test_decode_through_the_cache_gives_the_full_forward_logits(train_lm):
    import nnxfn as nnx

    lm = train_lm.lm
    cfg = lm.Config(dim=32, heads=4, depth=2, mlp=64, length=16, dropout=0.1)
    model = lm.GPT(cfg, rngs=nnx.Rngs(params=1, dropout=2))
    tokens = jax.random.randint(jax.random.key(0), (2, 12), 0, 103)
    model.eval()
    full = model(tokens)  # causal: position t sees tokens[:, : t + 1]

    model.init_cache(2, cfg.length)
    step = nnx.jit(lambda m, t: m(t, decode=True))
    logits = [step(model, tokens[:, t : t + 1]) for t in range(tokens.shape[1])]
    np.testing.assert_allclose(jnp.concatenate(logits, axis=1), full, atol=2e-5, rtol=1e-5)
    assert int(model.position[...]) == 12
    np.testing.assert_array_equal(model.blocks.attn.cache_index[...], [12, 12])  # one per layer

    # A different prefix changes later logits only: the cache keeps what came before.
    other = tokens.at[:, 5].set((tokens[:, 5] + 1) % 103)
    full_other = model(other)
    np.testing.assert_allclose(full_other[:, :5], full[:, :5], atol=1e-6)
    assert not np.allclose(full_other[:, 5:], full[:, 5:])


def test_decode_step_samples_only_allowed_characters(train_lm):
    import nnxfn as nnx

    lm = train_lm.lm
    cfg = lm.Config(dim=32, heads=4, depth=2, mlp=64, length=8)
    model = lm.GPT(cfg, rngs=nnx.Rngs(0))
    model.eval()
    model.init_cache(4, 8)
    first = jnp.array([[1], [2], [3], [4]], jnp.int32)
    greedy = lm.decode_step(model, first, jax.random.key(0), jnp.float32(1.0), 1, 50)
    model.init_cache(4, 8)
    want = jnp.argmax(model(first, decode=True)[:, -1, :50], axis=-1)
    np.testing.assert_array_equal(greedy[:, 0], want)  # top-k 1: the most likely allowed character

    model.init_cache(4, 8)
    hot = jnp.float32(100.0)  # nearly uniform: without the limits any of the 128 would come
    drawn = [lm.decode_step(model, first, jax.random.key(i), hot, 0, 5) for i in range(6)]
    assert int(jnp.max(jnp.stack(drawn))) < 5 and len({int(d[0, 0]) for d in drawn}) > 1


def test_gpt_errors_name_the_fix(train_lm):
    import nnxfn as nnx

    lm = train_lm.lm
    model = lm.GPT(lm.Config(dim=32, heads=4, depth=1, mlp=32, length=8), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="call `model.init_cache"):
        model(jnp.zeros((1, 1), jnp.int32), decode=True)
    with pytest.raises(ValueError, match="max_length 9 exceeds the 8 positions"):
        model.init_cache(1, 9)


def test_corpus_and_epoch_windows(train_lm):
    text = train_lm.load_text()
    corpus = train_lm.Corpus(text, 128)
    assert len(corpus.chars) == len(set(text)) and len(corpus.train) + len(corpus.val) == len(text)
    assert corpus.decode(corpus.val[:50]) == text[len(corpus.train) : len(corpus.train) + 50]
    counts = np.array([text.count(c) for c in corpus.chars]) / len(text)
    assert corpus.unigram_entropy == pytest.approx(-(counts * np.log(counts)).sum(), rel=1e-9)

    n, length, batch = 1000, 16, 4
    per = train_lm.steps_per_epoch(n, length, batch)
    for epoch in range(3):
        starts = train_lm.epoch_windows(n, length, batch, seed=0, epoch=epoch)
        assert len(starts) == per * batch and len(set(starts)) == len(starts)
        assert starts.max() + length + 1 <= n  # every window has its targets
    again = train_lm.epoch_windows(n, length, batch, seed=0, epoch=1)
    np.testing.assert_array_equal(again, train_lm.epoch_windows(n, length, batch, seed=0, epoch=1))
    x, y = train_lm.windows(corpus.train, np.array([0, 100]), 8)
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    assert corpus.decode(x[1]) == text[100:108]


def test_bad_flags_exit(train_lm, tmp_path):
    with pytest.raises(SystemExit):
        train_lm.main(["--model-parallel", "3", "--devices", "8", "--out", str(tmp_path)])
    if jax.device_count() < 8:
        with pytest.raises(SystemExit, match="sets XLA_FLAGS before JAX loads"):
            train_lm.main([*TINY, "--devices", "8", "--out", str(tmp_path)])
