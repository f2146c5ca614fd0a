"""Point 1: Equinox modules (any foreign pytree) as plain Module attributes."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxfn as nnx
from nnxfn.interop import ForeignState

KEY = jax.random.key(0)


class Holder(nnx.Module):
    def __init__(self, **attrs):
        for k, v in attrs.items():
            setattr(self, k, v)


def _types(state):
    return {p: type(v) for p, v in state.flat_state()}


def test_attribute_keeps_genuine_equinox_object_with_plain_arrays():
    mlp = eqx.nn.MLP(2, 3, 4, 1, key=KEY)
    m = Holder(mlp=mlp)
    assert m.mlp is mlp
    nnx.split(m)
    nnx.state(m)
    assert m.mlp is mlp  # splitting never rewrites the attribute
    assert type(m.mlp.layers[0].weight) is type(jnp.zeros(1))
    out = m.mlp(jnp.ones(2))
    np.testing.assert_allclose(out, mlp(jnp.ones(2)))


def test_inexact_arrays_are_params_with_their_values():
    mlp = eqx.nn.MLP(2, 3, 4, 1, key=KEY)
    params = nnx.state(Holder(mlp=mlp), nnx.Param)
    types = _types(params)
    assert set(types) == {
        ("mlp", "layers", 0, "weight"),
        ("mlp", "layers", 0, "bias"),
        ("mlp", "layers", 1, "weight"),
        ("mlp", "layers", 1, "bias"),
    }
    assert set(types.values()) == {nnx.Param}
    np.testing.assert_array_equal(params["mlp"]["layers"][1]["weight"][...], mlp.layers[1].weight)


def test_real_layers_conv_layernorm_attention():
    m = Holder(
        conv=eqx.nn.Conv2d(3, 4, 3, key=KEY),
        ln=eqx.nn.LayerNorm(5),
        mha=eqx.nn.MultiheadAttention(2, 8, key=KEY),
    )
    types = _types(nnx.state(m))
    assert types[("conv", "weight")] is nnx.Param and types[("conv", "bias")] is nnx.Param
    assert types[("ln", "weight")] is nnx.Param and types[("ln", "bias")] is nnx.Param
    assert types[("mha", "query_proj", "weight")] is nnx.Param
    assert len(types) == 2 + 2 + 4  # MHA has no biases by default
    graphdef, state = nnx.split(m)
    back = nnx.merge(graphdef, state)
    assert type(back.mha) is eqx.nn.MultiheadAttention
    x = jnp.arange(16.0).reshape(2, 8)
    np.testing.assert_allclose(back.mha(x, x, x), m.mha(x, x, x), rtol=1e-6)
    np.testing.assert_array_equal(back.ln.weight, m.ln.weight)


def test_batchnorm_state_arrays_are_batch_stats():
    bn, st = eqx.nn.make_with_state(eqx.nn.BatchNorm)(3, "batch", mode="ema")
    types = _types(nnx.state(Holder(bn=bn, st=st)))
    assert types[("bn", "weight")] is nnx.Param
    stats = {p: t for p, t in types.items() if p[0] == "st"}
    assert stats and set(stats.values()) == {nnx.BatchStat}
    assert len(jax.tree.leaves(st)) == len(stats)


def test_int_bool_and_key_arrays_are_foreign_state_not_params():
    class Misc(eqx.Module):
        w: jax.Array
        step: jax.Array
        mask: jax.Array
        key: jax.Array

    misc = Misc(jnp.ones(2), jnp.array(3), jnp.array([True, False]), jax.random.key(1))
    types = _types(nnx.state(Holder(misc=misc)))
    assert types == {
        ("misc", "w"): nnx.Param,
        ("misc", "step"): ForeignState,
        ("misc", "mask"): ForeignState,
        ("misc", "key"): ForeignState,
    }
    assert nnx.ForeignState is ForeignState and not issubclass(ForeignState, nnx.Param)
    grads = nnx.grad(lambda m: (m.misc.w * m.misc.step).sum())(Holder(misc=misc))
    assert list(_types(grads)) == [("misc", "w")]


def test_non_array_leaves_are_static_graphdef_entries():
    mlp = eqx.nn.MLP(2, 3, 4, 1, activation=jax.nn.tanh, key=KEY)
    graphdef, state = nnx.split(Holder(mlp=mlp))
    assert "tanh" in repr(graphdef)
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(state))
    assert nnx.merge(graphdef, state).mlp.activation is jax.nn.tanh
    hash(graphdef)


def test_unhashable_static_leaf_is_kept_by_value():
    class Bad(eqx.Module):
        w: jax.Array
        table: object

    m = Holder(enc=Bad(jnp.ones(2), bytearray(b"unhashable")))
    graphdef, state = nnx.split(m)  # as in Flax: static values need not be hashable
    hash(graphdef)
    assert nnx.merge(graphdef, state).enc.table == bytearray(b"unhashable")


def test_register_leaf_type_per_class_and_field():
    lin = eqx.nn.Linear(2, 3, key=KEY)
    nnx.interop.register_leaf_type(eqx.nn.Linear, "bias", nnx.BatchStat)
    try:
        types = _types(nnx.state(Holder(lin=lin)))
        assert types == {("lin", "weight"): nnx.Param, ("lin", "bias"): nnx.BatchStat}
        grads = nnx.grad(lambda m: m.lin(jnp.ones(2)).sum())(Holder(lin=lin))
        assert list(_types(grads)) == [("lin", "weight")]
    finally:
        nnx.interop.register_leaf_type(eqx.nn.Linear, "bias", None)
    assert _types(nnx.state(Holder(lin=lin)))[("lin", "bias")] is nnx.Param


def test_leaf_types_context_and_decorator():
    m = Holder(ln=eqx.nn.LayerNorm(3))

    def frozen(path, value, ancestors):
        return nnx.Intermediate if ancestors[-1] is eqx.nn.LayerNorm else None

    with nnx.interop.leaf_types(frozen):
        assert set(_types(nnx.state(m)).values()) == {nnx.Intermediate}
    assert set(_types(nnx.state(m)).values()) == {nnx.Param}

    @nnx.interop.leaf_types(frozen)
    def params(model):
        return nnx.state(model, nnx.Param)

    assert len(params(m)) == 0 and len(nnx.state(m, nnx.Param)["ln"]) == 2


def test_leaf_type_must_be_a_variable_type():
    with pytest.raises(TypeError, match="Variable subclass"):
        nnx.interop.register_leaf_type(eqx.nn.Linear, "bias", int)
    with nnx.interop.leaf_types(lambda p, x, a: float):
        with pytest.raises(TypeError, match="Variable subclass"):
            nnx.state(Holder(lin=eqx.nn.Linear(2, 3, key=KEY)))


def test_mixed_int_and_str_dict_keys_have_a_canonical_order():
    m = Holder(table={"b": jnp.ones(1), 1: jnp.zeros(1), "a": jnp.ones(2), 0: jnp.ones(3)})
    graphdef, state = nnx.split(m)
    paths = [p for p, _ in state.flat_state()]
    assert paths == [("table", 0), ("table", 1), ("table", "a"), ("table", "b")]
    assert [x.shape for x in jax.tree.leaves(state)] == [(3,), (1,), (2,), (1,)]
    back = nnx.merge(graphdef, state)
    assert set(back.table) == {0, 1, "a", "b"}
    np.testing.assert_array_equal(back.table[0], jnp.ones(3))


def test_merge_of_split_puts_raw_arrays_back_into_the_equinox_module():
    class Holder(nnx.Module):
        def __init__(self):
            self.enc = eqx.nn.Linear(2, 3, key=jax.random.key(0))

    model = Holder()
    graphdef, state = nnx.split(model)
    assert isinstance(state["enc"]["weight"], nnx.Param)  # boxed in the State only
    merged = nnx.merge(graphdef, state)
    assert type(merged.enc) is eqx.nn.Linear
    assert isinstance(merged.enc.weight, jax.Array) and not isinstance(merged.enc.weight, nnx.Variable)
    np.testing.assert_array_equal(merged.enc.weight, model.enc.weight)
    np.testing.assert_array_equal(merged.enc(jnp.ones(2)), model.enc(jnp.ones(2)))
