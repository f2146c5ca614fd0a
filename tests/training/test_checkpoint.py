"""save_checkpoint / restore_checkpoint: round trips, mismatches, atomicity."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nnxfn.core import State, state
from nnxfn.facade.module import Module
from nnxfn.facade.variables import BatchStat, Param, Variable
from nnxfn.training import checkpoint as ckpt
from nnxfn.training.checkpoint import restore_checkpoint, save_checkpoint
from nnxfn.training.optimizer import ModelAndOptimizer, OptVariable, Optimizer

BACKENDS = ["orbax", "npz"]


class Custom(Variable):
    pass


class Block(Module):
    def __init__(self, din: int, dout: int, key: jax.Array):
        self.kernel = Param(jax.random.normal(key, (din, dout)))
        self.bias = Param(jnp.arange(dout, dtype=jnp.bfloat16))


class Model(Module):
    def __init__(self, key: jax.Array, width: int = 4, dtype=jnp.float32):
        k1, k2 = jax.random.split(key)
        self.layers = [Block(3, width, k1), Block(width, 2, k2)]
        self.layers[0].kernel.value = self.layers[0].kernel.value.astype(dtype)
        self.stats = BatchStat(jnp.array([1, 2, 3], jnp.int32))
        self.counter = Custom(jnp.array(7, jnp.uint32))


def raw(tree):
    return jax.tree.map(lambda v: v.value if isinstance(v, Variable) else v, tree,
                        is_leaf=lambda v: isinstance(v, Variable))


def assert_same(a, b):
    fa, fb = state(a).flat_state(), state(b).flat_state()
    assert [p for p, _ in fa] == [p for p, _ in fb]
    for (path, x), (_, y) in zip(fa, fb):
        assert type(x) is type(y), path
        assert x.value.dtype == y.value.dtype, path
        np.testing.assert_array_equal(np.asarray(x.value), np.asarray(y.value))


@pytest.mark.parametrize("backend", BACKENDS)
def test_round_trip_concrete(tmp_path, backend):
    model = Model(jax.random.key(0))
    target = Model(jax.random.key(1))
    path = save_checkpoint(tmp_path / "ck", model, backend=backend)
    out = restore_checkpoint(path, target)
    assert out is target
    assert_same(model, target)
    meta = json.loads((path / "nnxfn.json").read_text())
    assert meta["backend"] == backend
    assert {"path": ["layers", 0, "bias"], "shape": [4], "dtype": "bfloat16"} in meta["items"][0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_round_trip_into_abstract_model(tmp_path, backend):
    model = Model(jax.random.key(0))
    save_checkpoint(tmp_path / "ck", model, backend=backend)
    abstract = jax.eval_shape(lambda: Model(jax.random.key(1)))
    assert isinstance(abstract.layers[0].kernel.value, jax.ShapeDtypeStruct)
    restored = restore_checkpoint(tmp_path / "ck", abstract)
    assert_same(model, restored)
    kernel = restored.layers[0].kernel.value
    assert isinstance(kernel, jax.Array)
    assert kernel.sharding == jax.sharding.SingleDeviceSharding(jax.devices()[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_round_trip_optimizer(tmp_path, backend):
    model = Model(jax.random.key(0))
    optimizer = Optimizer(model, optax.adam(0.1))
    grads = jax.tree.map(jnp.ones_like, raw(state(model, Param)))
    optimizer.update(grads)
    # The optimizer's State is Flax's (step, opt_state): save the model beside it.
    save_checkpoint(tmp_path / "ck", model, optimizer, backend=backend)

    def build():
        m = Model(jax.random.key(1))
        return m, Optimizer(m, optax.adam(0.1))

    abstract_model, abstract_opt = jax.eval_shape(build)
    restored_model, restored = restore_checkpoint(tmp_path / "ck", abstract_model, abstract_opt)
    assert_same(optimizer, restored)
    assert_same(model, restored_model)
    assert isinstance(restored.opt_state[0].mu["layers"][0]["kernel"], OptVariable)
    assert int(restored.step.value) == 1
    restored.update(restored_model, grads)  # a usable optimizer
    assert int(restored.step.value) == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_several_items_and_state_target(tmp_path, backend):
    a, b = Model(jax.random.key(0)), Model(jax.random.key(1), width=5)
    save_checkpoint(tmp_path / "ck", a, state(b, Param), backend=backend)
    ta, tb = Model(jax.random.key(2)), Model(jax.random.key(3), width=5)
    out_a, out_b = restore_checkpoint(tmp_path / "ck", ta, state(tb, Param))
    assert out_a is ta
    assert_same(a, ta)
    assert isinstance(out_b, State)
    jax.tree.map(np.testing.assert_array_equal, raw(out_b), raw(state(b, Param)))


def test_on_disk_layout_is_pure_dict(tmp_path):
    import orbax.checkpoint as ocp

    model = Model(jax.random.key(0))
    save_checkpoint(tmp_path / "ck", model, backend="orbax")
    with ocp.StandardCheckpointer() as c:
        tree = c.restore(tmp_path / "ck" / "state")
    target = Model(jax.random.key(5))
    new = state(target).replace_by_pure_dict(tree)
    jax.tree.map(np.testing.assert_array_equal, raw(new), raw(state(model)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_mismatch_errors(tmp_path, backend):
    save_checkpoint(tmp_path / "ck", Model(jax.random.key(0)), backend=backend)
    with pytest.raises(ValueError, match=(
        r"shape/dtype mismatch:\n    model\.layers\[0\]\.bias: checkpoint \(4,\) bfloat16, "
        r"model \(5,\) bfloat16\n    model\.layers\[0\]\.kernel: checkpoint \(3, 4\) float32, "
        r"model \(3, 5\) float32"
    )):
        restore_checkpoint(tmp_path / "ck", Model(jax.random.key(0), width=5))
    with pytest.raises(ValueError, match=(
        r"model\.layers\[0\]\.kernel: checkpoint \(3, 4\) float32, model \(3, 4\) float16"
    )):
        restore_checkpoint(tmp_path / "ck", Model(jax.random.key(0), dtype=jnp.float16))
    bigger = Model(jax.random.key(0))
    bigger.extra = Param(jnp.ones(2))
    with pytest.raises(ValueError, match=r"missing from the checkpoint: model\.extra"):
        restore_checkpoint(tmp_path / "ck", bigger)
    smaller = Model(jax.random.key(0))
    del smaller.counter
    with pytest.raises(ValueError, match=r"in the checkpoint but not in the model: model\.counter"):
        restore_checkpoint(tmp_path / "ck", smaller)


def test_model_vs_optimizer_hint(tmp_path):
    model = Model(jax.random.key(0))
    save_checkpoint(tmp_path / "ck", ModelAndOptimizer(model, optax.sgd(0.1)))
    with pytest.raises(ValueError, match=r"in the checkpoint under 'model'"):
        restore_checkpoint(tmp_path / "ck", Model(jax.random.key(0)))


def test_other_errors(tmp_path):
    model = Model(jax.random.key(0))
    save_checkpoint(tmp_path / "ck", model)
    with pytest.raises(ValueError, match=r"holds 1 item\(s\) but 2 target\(s\)"):
        restore_checkpoint(tmp_path / "ck", model, model)
    with pytest.raises(FileNotFoundError, match="no nnxfn checkpoint"):
        restore_checkpoint(tmp_path / "nothing", model)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_checkpoint(tmp_path / "ck", model, overwrite=False)
    abstract = jax.eval_shape(lambda: Model(jax.random.key(1)))
    with pytest.raises(TypeError, match=r"model\.counter is a ShapeDtypeStruct"):
        save_checkpoint(tmp_path / "ck2", abstract)
    with pytest.raises(ValueError, match="backend='zip'"):
        save_checkpoint(tmp_path / "ck3", model, backend="zip")


def leftovers(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("backend", BACKENDS)
def test_interrupted_save_keeps_previous(tmp_path, backend, monkeypatch):
    good = Model(jax.random.key(0))
    save_checkpoint(tmp_path / "ck", good, backend=backend)

    real_writer = ckpt._WRITERS[backend]

    def dies_midway(tmp, flats):
        real_writer(tmp, flats)  # the arrays are written, then the process "dies"
        raise RuntimeError("power cut")

    monkeypatch.setitem(ckpt._WRITERS, backend, dies_midway)
    with pytest.raises(RuntimeError, match="power cut"):
        save_checkpoint(tmp_path / "ck", Model(jax.random.key(9)), backend=backend)
    monkeypatch.undo()

    def metadata_fails(*args):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "_write_metadata", metadata_fails)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "ck", Model(jax.random.key(9)), backend=backend)
    assert leftovers(tmp_path) == []
    assert_same(good, restore_checkpoint(tmp_path / "ck", Model(jax.random.key(1))))


def test_crash_between_renames_falls_back_to_previous(tmp_path, monkeypatch):
    good = Model(jax.random.key(0))
    save_checkpoint(tmp_path / "ck", good)

    def first_rename_only(tmp, path):
        os.replace(path, path.parent / f".{path.name}.old-x")
        raise SystemExit("killed")

    monkeypatch.setattr(ckpt, "_swap_into_place", first_rename_only)
    with pytest.raises(SystemExit):
        save_checkpoint(tmp_path / "ck", Model(jax.random.key(9)))
    assert not (tmp_path / "ck").exists()
    assert_same(good, restore_checkpoint(tmp_path / "ck", Model(jax.random.key(1))))
    monkeypatch.undo()
    newer = Model(jax.random.key(3))
    save_checkpoint(tmp_path / "ck", newer)  # a later save cleans the backup up
    assert leftovers(tmp_path) == []
    assert_same(newer, restore_checkpoint(tmp_path / "ck", Model(jax.random.key(1))))


def test_overwrite_replaces(tmp_path):
    save_checkpoint(tmp_path / "ck", Model(jax.random.key(0)))
    newer = Model(jax.random.key(4))
    save_checkpoint(tmp_path / "ck", newer)
    assert leftovers(tmp_path) == []
    assert_same(newer, restore_checkpoint(tmp_path / "ck", Model(jax.random.key(1))))


def test_without_orbax_falls_back_to_npz(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "orbax.checkpoint", None)  # import now fails
    model = Model(jax.random.key(0))
    path = save_checkpoint(tmp_path / "ck", model)
    assert json.loads((path / "nnxfn.json").read_text())["backend"] == "npz"
    assert_same(model, restore_checkpoint(path, Model(jax.random.key(1))))
    with pytest.raises(ImportError, match=r"pip install 'nnxfn\[checkpoint\]'"):
        save_checkpoint(tmp_path / "ck2", model, backend="orbax")


@pytest.mark.parametrize("backend", BACKENDS)
def test_round_trip_prng_keys(tmp_path, backend):
    """Typed PRNG keys (Rngs streams, e.g. inside Dropout) are saved as key data."""
    from nnxfn.facade.rngs import Rngs
    from nnxfn.nn.stochastic import Dropout

    model = Dropout(0.5, rngs=Rngs(0))
    model.rngs()
    save_checkpoint(tmp_path / "ck", model, backend=backend)
    for target in (Dropout(0.5, rngs=Rngs(1)), jax.eval_shape(lambda: Dropout(0.5, rngs=Rngs(1)))):
        restored = restore_checkpoint(tmp_path / "ck", target)
        key, want = restored.rngs.key[...], model.rngs.key[...]
        assert key.dtype == want.dtype
        np.testing.assert_array_equal(jax.random.key_data(key), jax.random.key_data(want))
        assert int(restored.rngs.count[...]) == 1
    rbg = Dropout(0.5, rngs=Rngs(jax.random.key(0, impl="rbg")))
    with pytest.raises(ValueError, match=r"key<fry>.*key<rbg>"):
        restore_checkpoint(tmp_path / "ck", rbg)
