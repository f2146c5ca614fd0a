"""Point 6: canonical key order, Equinox checkpoints, Equinox predicates as filters."""

import io

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxfn as nnx

KEY = jax.random.key(0)


class Holder(nnx.Module):
    def __init__(self):
        self.ln = eqx.nn.LayerNorm(3)  # weight and bias have the same shape
        self.enc = eqx.nn.MLP(3, 3, 4, 1, key=KEY)
        self.step = nnx.BatchStat(jnp.array(0))


def _trained_layernorm():
    ln = eqx.nn.LayerNorm(3)
    return eqx.tree_at(lambda l: (l.weight, l.bias), ln, (jnp.array([1.0, 2, 3]), jnp.array([-1.0, -2, -3])))


def test_equinox_checkpoint_into_matching_attribute_never_swaps_fields(tmp_path):
    ln = _trained_layernorm()
    path = tmp_path / "ln.eqx"
    eqx.tree_serialise_leaves(path, ln)
    m = Holder()
    loaded = nnx.interop.load_equinox(path, m, "ln")
    assert m.ln is loaded
    np.testing.assert_array_equal(m.ln.weight, [1.0, 2, 3])
    np.testing.assert_array_equal(m.ln.bias, [-1.0, -2, -3])
    state = nnx.state(m)  # sorted names: bias before weight, values follow the names
    np.testing.assert_array_equal(state["ln"]["bias"][...], [-1.0, -2, -3])
    # the plain Equinox way works too: the attribute is the genuine Equinox module
    m2 = Holder()
    m2.ln = eqx.tree_deserialise_leaves(path, m2.ln)
    np.testing.assert_array_equal(m2.ln.weight, [1.0, 2, 3])


def test_load_equinox_into_nested_list_and_errors(tmp_path):
    class Stack(nnx.Module):
        def __init__(self):
            self.blocks = [eqx.nn.LayerNorm(3), eqx.nn.LayerNorm(3)]

    path = tmp_path / "ln.eqx"
    eqx.tree_serialise_leaves(path, _trained_layernorm())
    s = Stack()
    nnx.interop.load_equinox(path, s, "blocks", 1)
    np.testing.assert_array_equal(s.blocks[1].bias, [-1.0, -2, -3])
    np.testing.assert_array_equal(s.blocks[0].bias, [0.0, 0, 0])
    with pytest.raises(KeyError, match=r"model\.blocks\[5\]"):
        nnx.interop.load_equinox(path, s, "blocks", 5)
    with pytest.raises(TypeError, match="which attribute"):
        nnx.interop.load_equinox(path, s)


def test_whole_model_equinox_serialisation_roundtrip_keeps_fields():
    m = Holder()
    m.ln = _trained_layernorm()
    buf = io.BytesIO()
    eqx.tree_serialise_leaves(buf, m)
    buf.seek(0)
    back = eqx.tree_deserialise_leaves(buf, Holder())
    np.testing.assert_array_equal(back.ln.weight, [1.0, 2, 3])
    np.testing.assert_array_equal(back.ln.bias, [-1.0, -2, -3])
    # JAX leaf order inside the Equinox attribute is Equinox's own field order
    assert [x.tolist() for x in jax.tree.leaves(back.ln)] == [[1.0, 2, 3], [-1.0, -2, -3]]


def test_nnxfn_checkpoint_with_equinox_attribute(tmp_path):
    m = Holder()
    m.ln = _trained_layernorm()
    nnx.save_checkpoint(tmp_path / "ckpt", m)
    fresh = Holder()
    nnx.restore_checkpoint(tmp_path / "ckpt", fresh)
    np.testing.assert_array_equal(fresh.ln.weight, [1.0, 2, 3])
    np.testing.assert_array_equal(fresh.ln.bias, [-1.0, -2, -3])
    assert type(fresh.ln) is eqx.nn.LayerNorm


def test_pure_dict_roundtrip_uses_names():
    m = Holder()
    pure = nnx.state(m).to_pure_dict()
    pure["ln"]["weight"] = np.array([1.0, 2, 3])
    new = nnx.state(m).replace_by_pure_dict(pure)
    nnx.update(m, new)
    np.testing.assert_array_equal(m.ln.weight, [1.0, 2, 3])
    np.testing.assert_array_equal(m.ln.bias, [0.0, 0, 0])


def test_state_order_is_canonical_and_type_aware():
    state = nnx.State({"b": 1, 2: 2, "a": 3, 0: 4, 10: 5})
    assert [p for p, _ in state.flat_state()] == [(0,), (2,), (10,), ("a",), ("b",)]
    assert jax.tree.leaves(state) == [4, 2, 5, 3, 1]


def test_from_predicate_adapts_equinox_filters():
    m = Holder()
    inexact, rest = nnx.state(m, nnx.from_predicate(eqx.is_inexact_array), ...)
    assert ("step",) in dict(rest.flat_state()) and ("step",) not in dict(inexact.flat_state())
    assert len(inexact.flat_state()) == 2 + 4
    graphdef, arrays, others = nnx.split(m, nnx.from_predicate(eqx.is_array), ...)
    assert len(others.flat_state()) == 0
    both = nnx.All(nnx.Param, nnx.from_predicate(lambda x: x.ndim == 2))
    assert {p for p, _ in nnx.state(m, both).flat_state()} == {
        ("enc", "layers", 0, "weight"),
        ("enc", "layers", 1, "weight"),
    }
    hash(nnx.from_predicate(eqx.is_array))


def test_from_predicate_as_optimizer_wrt():
    import optax

    m = Holder()
    opt = nnx.Optimizer(m, optax.sgd(1.0), wrt=nnx.from_predicate(eqx.is_inexact_array))
    grads = nnx.grad(
        lambda m: jax.vmap(m.enc)(jnp.ones((2, 3))).sum(),
        argnums=nnx.DiffState(0, nnx.from_predicate(eqx.is_inexact_array)),
    )(m)
    before = np.asarray(m.enc.layers[1].bias)
    opt.update(m, grads)
    np.testing.assert_allclose(m.enc.layers[1].bias, before - 2.0)
