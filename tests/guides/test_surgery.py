"""The behaviour shown in Flax's `guides/surgery`, run with `import nnxfn as nnx`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxfn as nnx


class TwoLayerMLP(nnx.Module):
    def __init__(self, dim, rngs: nnx.Rngs):
        self.linear1 = nnx.Linear(dim, dim, rngs=rngs)
        self.linear2 = nnx.Linear(dim, dim, rngs=rngs)

    def __call__(self, x):
        return self.linear2(self.linear1(x))


class ModifiedTwoLayerMLP(nnx.Module):
    def __init__(self, dim, rngs: nnx.Rngs):
        self.layer1 = nnx.Linear(dim, dim, rngs=rngs)
        self.layer2 = nnx.Linear(dim, dim, rngs=rngs)

    def __call__(self, x):
        return self.layer2(self.layer1(x))


X = jax.random.normal(jax.random.key(42), (3, 4))


def test_swap_share_tie_and_monkey_patch_submodules():
    model = TwoLayerMLP(4, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(model(X), model.linear2(model.linear1(X)))
    original1, original2 = model.linear1, model.linear2
    model.linear1, model.linear2 = model.linear2, model.linear1
    np.testing.assert_allclose(model(X), original1(original2(X)))

    model = TwoLayerMLP(4, rngs=nnx.Rngs(0))
    model.linear2 = model.linear1
    assert "linear2" not in nnx.state(model)
    np.testing.assert_allclose(model(X), model.linear1(model.linear1(X)))

    model = TwoLayerMLP(4, rngs=nnx.Rngs(0))
    model.linear1.kernel = model.linear2.kernel
    state = nnx.state(model)
    assert "bias" in state["linear2"]
    assert ("kernel" in state["linear1"]) != ("kernel" in state["linear2"])  # stored once

    model = TwoLayerMLP(4, rngs=nnx.Rngs(0))
    model.linear2 = lambda x: x
    np.testing.assert_allclose(model(X), model.linear1(X))


def test_fill_an_abstract_model_by_assigning_state_values():
    abs_model = nnx.eval_shape(lambda: TwoLayerMLP(4, rngs=nnx.Rngs(0)))
    gdef, abs_state = nnx.split(abs_model)
    assert isinstance(abs_state["linear1"]["kernel"].value, jax.ShapeDtypeStruct)
    model = TwoLayerMLP(4, rngs=nnx.Rngs(0))
    abs_state["linear1"]["kernel"].value = model.linear1.kernel.value
    abs_state["linear1"]["bias"].value = model.linear1.bias.value
    abs_state["linear2"]["kernel"].value = model.linear2.kernel.value
    abs_state["linear2"]["bias"].value = model.linear2.bias.value
    nnx.update(abs_model, abs_state)
    np.testing.assert_allclose(abs_model(X), model(X))


def test_traversals_flatten_and_unflatten_mappings():
    nested = {"a": {"b": 1, "c": {"d": 2}}, "e": 3}
    flat = nnx.traversals.flatten_mapping(nested)
    assert flat == {("a", "b"): 1, ("a", "c", "d"): 2, ("e",): 3}
    assert nnx.traversals.unflatten_mapping(flat) == nested


def test_rename_layers_in_a_raw_checkpoint(tmp_path):
    orbax = pytest.importorskip("orbax.checkpoint")
    checkpointer = orbax.PyTreeCheckpointer()
    old_model = TwoLayerMLP(4, rngs=nnx.Rngs(0))
    checkpointer.save(tmp_path / "state", nnx.state(old_model), force=True)

    def process_raw_dict(raw_state_dict):
        flattened = nnx.traversals.flatten_mapping(raw_state_dict)
        flattened = {(path[:-1] if path[-1] == "value" else path): value for path, value in flattened.items()}
        return nnx.traversals.unflatten_mapping(flattened)

    raw_dict = checkpointer.restore(tmp_path / "state")
    raw_dict["layer1"] = raw_dict.pop("linear1")
    raw_dict["layer2"] = raw_dict.pop("linear2")
    abs_model = nnx.eval_shape(lambda: ModifiedTwoLayerMLP(4, rngs=nnx.Rngs(0)))
    graph_def, state = nnx.split(abs_model)
    nnx.replace_by_pure_dict(state, process_raw_dict(raw_dict))
    restored_model = nnx.merge(graph_def, state)
    np.testing.assert_allclose(restored_model(jnp.ones((3, 4))), old_model(jnp.ones((3, 4))), rtol=1e-6)


def test_update_abstract_model_with_lora_from_pretrained_state():
    old_state = nnx.state(TwoLayerMLP(4, rngs=nnx.Rngs(0)))
    simple_model = nnx.eval_shape(lambda: TwoLayerMLP(4, rngs=nnx.Rngs(42)))
    simple_model.linear1 = nnx.LoRALinear(4, 4, lora_rank=3, rngs=nnx.Rngs(42))
    nnx.update(simple_model, old_state)
    np.testing.assert_array_equal(simple_model.linear1.kernel[...], old_state["linear1"]["kernel"][...])
    np.testing.assert_array_equal(simple_model.linear2.bias[...], old_state["linear2"]["bias"][...])
    assert simple_model.linear1.lora.lora_a.shape == (4, 3)


def test_partial_init_under_jit_with_donated_state():
    old_state = nnx.state(TwoLayerMLP(4, rngs=nnx.Rngs(0)))
    expected = jax.tree.map(np.asarray, old_state)

    @nnx.jit(donate_argnums=0)
    def partial_init(old_state, rngs):
        model = TwoLayerMLP(4, rngs=rngs)
        model.linear1 = nnx.LoRALinear(4, 4, lora_rank=3, rngs=rngs)
        nnx.update(model, old_state)
        return model

    good_model = partial_init(old_state, nnx.Rngs(42))
    assert isinstance(good_model.linear1, nnx.LoRALinear)
    np.testing.assert_array_equal(good_model.linear1.kernel[...], expected["linear1"]["kernel"][...])
    np.testing.assert_array_equal(good_model.linear2.kernel[...], expected["linear2"]["kernel"][...])
    assert good_model.linear1.lora.lora_b.shape == (3, 4)
