"""The behaviour shown in Flax's `guides/checkpointing`, run with `import nnxfn as nnx`.

Orbax is used directly, as the guide does: the State from `nnx.split`/`nnx.state`
is the pytree Orbax saves, and the abstract State of `nnx.eval_shape(...)` is
the restore target.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxfn as nnx

ocp = pytest.importorskip("orbax.checkpoint")


class TwoLayerMLP(nnx.Module):
    def __init__(self, dim, rngs: nnx.Rngs, use_bias: bool = False):
        self.linear1 = nnx.Linear(dim, dim, rngs=rngs, use_bias=use_bias)
        self.linear2 = nnx.Linear(dim, dim, rngs=rngs, use_bias=use_bias)

    def __call__(self, x):
        return self.linear2(self.linear1(x))


@pytest.fixture
def ckpt_dir(tmp_path):
    return ocp.test_utils.erase_and_create_empty(tmp_path / "ckpt")


def saved_model(ckpt_dir, name="state"):
    model = TwoLayerMLP(4, rngs=nnx.Rngs(0))
    _, state = nnx.split(model)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(ckpt_dir / name, state)
    checkpointer.wait_until_finished()
    return model, state, checkpointer


def test_save_state_and_restore_into_abstract_state(ckpt_dir):
    model, state, checkpointer = saved_model(ckpt_dir)
    x = jax.random.normal(jax.random.key(42), (3, 4))

    abstract_model = nnx.eval_shape(lambda: TwoLayerMLP(4, rngs=nnx.Rngs(1)))
    graphdef, abstract_state = nnx.split(abstract_model)
    kernel = abstract_state["linear1"]["kernel"]
    assert isinstance(kernel, nnx.Param)
    assert isinstance(kernel.get_value(), jax.ShapeDtypeStruct) and kernel.shape == (4, 4)

    state_restored = checkpointer.restore(ckpt_dir / "state", abstract_state)
    jax.tree.map(np.testing.assert_array_equal, state, state_restored)
    assert isinstance(state_restored["linear2"]["kernel"], nnx.Param)

    restored = nnx.merge(graphdef, state_restored)
    np.testing.assert_allclose(restored(x), model(x), rtol=1e-6)


def test_save_and_restore_nnx_state_of_a_model(ckpt_dir):
    model = TwoLayerMLP(4, rngs=nnx.Rngs(0), use_bias=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(ckpt_dir / "model", nnx.state(model))
    checkpointer.wait_until_finished()
    abstract = nnx.eval_shape(lambda: TwoLayerMLP(4, rngs=nnx.Rngs(5), use_bias=True))
    restored_state = checkpointer.restore(ckpt_dir / "model", nnx.state(abstract))
    nnx.update(abstract, restored_state)
    np.testing.assert_array_equal(abstract.linear1.kernel[...], model.linear1.kernel[...])
    np.testing.assert_array_equal(abstract.linear2.bias[...], model.linear2.bias[...])


def test_save_and_restore_as_pure_dict(ckpt_dir):
    model, state, checkpointer = saved_model(ckpt_dir)
    pure_dict_state = nnx.to_pure_dict(state)
    assert set(pure_dict_state) == {"linear1", "linear2"}
    assert isinstance(pure_dict_state["linear1"]["kernel"], jax.Array)
    checkpointer.save(ckpt_dir / "pure_dict", pure_dict_state)
    checkpointer.wait_until_finished()

    restored_pure_dict = checkpointer.restore(ckpt_dir / "pure_dict")
    abstract_model = nnx.eval_shape(lambda: TwoLayerMLP(4, rngs=nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract_model)
    nnx.replace_by_pure_dict(abstract_state, restored_pure_dict)
    restored = nnx.merge(graphdef, abstract_state)
    x = jnp.ones((3, 4))
    np.testing.assert_allclose(restored(x), model(x), rtol=1e-6)


def test_restore_when_checkpoint_structures_differ(ckpt_dir):
    model, state, checkpointer = saved_model(ckpt_dir)
    checkpointer.save(ckpt_dir / "pure_dict", nnx.to_pure_dict(state))
    checkpointer.wait_until_finished()

    restored_pure_dict = checkpointer.restore(ckpt_dir / "pure_dict")
    restored_pure_dict["linear1"]["bias"] = jnp.zeros((4,))
    restored_pure_dict["linear2"]["bias"] = jnp.zeros((4,))
    abstract_model = nnx.eval_shape(lambda: TwoLayerMLP(4, rngs=nnx.Rngs(0), use_bias=True))
    graphdef, abstract_state = nnx.split(abstract_model)
    nnx.replace_by_pure_dict(abstract_state, restored_pure_dict)
    new_model = nnx.merge(graphdef, abstract_state)
    x = jnp.ones((3, 4))
    np.testing.assert_allclose(new_model(x), model(x), rtol=1e-6)
    np.testing.assert_array_equal(new_model.linear1.bias[...], jnp.zeros((4,)))


def test_optimizer_state_checkpoint_round_trip(ckpt_dir):
    import optax

    model = TwoLayerMLP(4, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    x = jnp.ones((3, 4))

    @nnx.jit
    def step(model, optimizer):
        grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model)
        optimizer.update(model, grads)

    step(model, optimizer)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(ckpt_dir / "opt", nnx.state(optimizer))
    checkpointer.wait_until_finished()

    abstract = nnx.eval_shape(
        lambda: nnx.Optimizer(TwoLayerMLP(4, rngs=nnx.Rngs(0)), optax.adam(1e-2), wrt=nnx.Param)
    )
    assert set(nnx.state(optimizer).keys()) == {"step", "opt_state"}  # flax's layout
    restored = checkpointer.restore(ckpt_dir / "opt", nnx.state(abstract))
    assert int(restored["step"][...]) == 1
    jax.tree.map(np.testing.assert_array_equal, nnx.state(optimizer), restored)
