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
    return jax.tree.map(
        lambda v: v.value if isinstance(v, Variable) else v, tree, is_leaf=lambda v: isinstance(v, Variable)
    )


def assert_same(a, b):
    fa, fb = state(a).flat_state(), state(b).flat_state()
    assert [p for p, _ in fa] == [p for p, _ in fb]
    for (path, x), (_, y) in zip(fa, fb):
        assert type(x) is type(y), path
        assert x.value.dtype == y.value.dtype, path
        np.testing.assert_array_equal(np.asarray(x.value), np.asarray(y.value))


def _meta(step_dir):
    if (step_dir / "nnxfn.json").is_file():  # npz
        return json.loads((step_dir / "nnxfn.json").read_text())
    return json.loads((step_dir / "nnxfn" / "metadata").read_text())  # an orbax JSON item


@pytest.mark.parametrize("backend", BACKENDS)
def test_round_trip_concrete(tmp_path, backend):
    model = Model(jax.random.key(0))
    target = Model(jax.random.key(1))
    path = save_checkpoint(tmp_path / "ck", model, backend=backend)
    out = restore_checkpoint(path, target)
    assert out is target
    assert_same(model, target)
    assert path == tmp_path / "ck" / "0"  # the first step
    meta = _meta(path)
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
        tree = c.restore(tmp_path / "ck" / "0" / "state")
    target = Model(jax.random.key(5))
    new = state(target).replace_by_pure_dict(tree)
    jax.tree.map(np.testing.assert_array_equal, raw(new), raw(state(model)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_mismatch_errors(tmp_path, backend):
    save_checkpoint(tmp_path / "ck", Model(jax.random.key(0)), backend=backend)
    with pytest.raises(
        ValueError,
        match=(
            r"shape/dtype mismatch:\n    model\.layers\[0\]\.bias: checkpoint \(4,\) bfloat16, "
            r"model \(5,\) bfloat16\n    model\.layers\[0\]\.kernel: checkpoint \(3, 4\) float32, "
            r"model \(3, 5\) float32"
        ),
    ):
        restore_checkpoint(tmp_path / "ck", Model(jax.random.key(0), width=5))
    with pytest.raises(
        ValueError, match=(r"model\.layers\[0\]\.kernel: checkpoint \(3, 4\) float32, model \(3, 4\) float16")
    ):
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
    with pytest.raises(FileExistsError, match="already holds step 0. Pass overwrite=True"):
        save_checkpoint(tmp_path / "ck", model, step=0, overwrite=False)
    with pytest.raises(FileNotFoundError, match="no checkpoint of step 7"):
        restore_checkpoint(tmp_path / "ck", model, step=7)
    abstract = jax.eval_shape(lambda: Model(jax.random.key(1)))
    with pytest.raises(TypeError, match=r"model\.counter is a ShapeDtypeStruct"):
        save_checkpoint(tmp_path / "ck2", abstract)
    with pytest.raises(ValueError, match="backend='zip'"):
        save_checkpoint(tmp_path / "ck3", model, backend="zip")


def leftovers(root):
    return sorted(p.name for p in root.iterdir() if not p.name.isdigit())


@pytest.mark.parametrize("backend", BACKENDS)
def test_failed_save_keeps_previous_latest(tmp_path, backend, monkeypatch):
    good = Model(jax.random.key(0))
    save_checkpoint(tmp_path / "ck", good, backend=backend)
    from nnxfn.training import checkpoint_format as fmt

    def dies_midway(*args, **kwargs):
        raise RuntimeError("power cut")

    if backend == "npz":
        real = fmt.write_npz

        def dies_midway(tmp, flats):  # noqa: F811 - the arrays are written, then it "dies"
            real(tmp, flats)
            raise RuntimeError("power cut")

        monkeypatch.setattr(fmt, "write_npz", dies_midway)
    else:
        monkeypatch.setattr(ckpt, "_save_args", dies_midway)
    with pytest.raises(RuntimeError, match="power cut"):
        save_checkpoint(tmp_path / "ck", Model(jax.random.key(9)), backend=backend)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path / "ck")) == ["0"]  # nothing half-written is left
    assert_same(good, restore_checkpoint(tmp_path / "ck", Model(jax.random.key(1))))


@pytest.mark.parametrize("backend", BACKENDS)
def test_step_numbered_retention_and_latest(tmp_path, backend):
    models = [Model(jax.random.key(i)) for i in range(5)]
    for i, m in enumerate(models):
        path = save_checkpoint(tmp_path / "ck", m, step=10 * i, max_to_keep=3, backend=backend)
        assert path == tmp_path / "ck" / str(10 * i)
    assert sorted(int(p) for p in os.listdir(tmp_path / "ck") if p.isdigit()) == [20, 30, 40]
    assert_same(models[4], restore_checkpoint(tmp_path / "ck", Model(jax.random.key(9))))
    assert_same(models[2], restore_checkpoint(tmp_path / "ck", Model(jax.random.key(9)), step=20))
    assert_same(models[3], restore_checkpoint(tmp_path / "ck" / "30", Model(jax.random.key(9))))
    with pytest.raises(FileNotFoundError, match="no checkpoint of step 0"):
        restore_checkpoint(tmp_path / "ck", Model(jax.random.key(9)), step=0)
    nxt = save_checkpoint(tmp_path / "ck", models[0], backend=backend)  # default: latest + 1
    assert nxt.name == "41"


def test_overwrite_replaces(tmp_path):
    save_checkpoint(tmp_path / "ck", Model(jax.random.key(0)), step=3)
    newer = Model(jax.random.key(4))
    save_checkpoint(tmp_path / "ck", newer, step=3)
    assert os.listdir(tmp_path / "ck") == ["3"]
    assert_same(newer, restore_checkpoint(tmp_path / "ck", Model(jax.random.key(1))))


def test_through_an_orbax_checkpoint_manager(tmp_path):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=2)
    models = [Model(jax.random.key(i)) for i in range(3)]
    with ocp.CheckpointManager(tmp_path / "ck", options=options) as manager:
        for epoch, m in enumerate(models):
            save_checkpoint(manager, m, step=epoch)  # may still be writing when it returns
        restored = restore_checkpoint(manager, Model(jax.random.key(9)))  # waits first
        assert manager.all_steps() == [1, 2]
    assert_same(models[2], restored)
    assert_same(models[1], restore_checkpoint(tmp_path / "ck", Model(jax.random.key(9)), step=1))


def test_version_1_checkpoints_still_restore(tmp_path):
    """A checkpoint directory from before step numbering (nnxfn.json + state/)."""
    import orbax.checkpoint as ocp
    from nnxfn.training import checkpoint_format as fmt

    model = Model(jax.random.key(0))
    flat = fmt.data_flat(fmt.flat(state(model)))
    path = tmp_path / "old"
    path.mkdir()
    with ocp.StandardCheckpointer() as c:
        c.save(path / "state", fmt.pure(flat))
    body = fmt.metadata("orbax", [fmt.flat(state(model))])
    fmt.write_metadata(path, {**body, "version": 1})
    assert_same(model, restore_checkpoint(path, Model(jax.random.key(1))))


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
