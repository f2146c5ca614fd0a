"""Linear, LinearGeneral, Einsum, Embed, PReLU: parameters, numbers, errors."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnxfn import core
from nnxfn.facade.rngs import Rngs
from nnxfn.facade.variables import Param
from nnxfn.nn import initializers
from nnxfn.nn.activations import PReLU
from nnxfn.nn.linear import Einsum, Embed, Linear, LinearGeneral


def _normal(shape, seed=0, dtype=jnp.float32):
    return jax.random.normal(jax.random.key(seed), shape, dtype)


def _eqx_linear(layer: Linear) -> eqx.nn.Linear:
    ref = eqx.nn.Linear(
        layer.in_features, layer.out_features, use_bias=layer.bias is not None, key=jax.random.key(9)
    )
    ref = eqx.tree_at(lambda m: m.weight, ref, layer.kernel[...].T)
    if layer.bias is not None:
        ref = eqx.tree_at(lambda m: m.bias, ref, layer.bias[...])
    return ref


# -- Linear -------------------------------------------------------------------------
def test_linear_params_match_flax_names_shapes_dtypes():
    layer = Linear(3, 5, rngs=Rngs(0))
    state = core.state(layer)
    assert sorted(state.flat_dict()) == [("bias",), ("kernel",)]
    assert layer.kernel.shape == (3, 5) and layer.bias.shape == (5,)
    assert type(layer.kernel) is Param and layer.kernel.dtype == jnp.float32
    assert (layer.in_features, layer.out_features) == (3, 5)
    np.testing.assert_array_equal(layer.bias[...], np.zeros(5))
    no_bias = Linear(3, 5, use_bias=False, rngs=Rngs(0))
    assert no_bias.bias is None and list(core.state(no_bias).flat_dict()) == [("kernel",)]


def test_linear_default_init_is_lecun_normal():
    layer = Linear(400, 300, rngs=Rngs(0))
    assert abs(float(layer.kernel[...].std()) - 1 / np.sqrt(400)) < 0.05 / np.sqrt(400)
    same = Linear(400, 300, kernel_init=initializers.lecun_normal(), rngs=Rngs(0))
    np.testing.assert_array_equal(layer.kernel[...], same.kernel[...])


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("batch", [(), (4,), (2, 3)])
def test_linear_matches_equinox(use_bias, batch):
    layer = Linear(6, 4, use_bias=use_bias, bias_init=initializers.normal(1.0), rngs=Rngs(1))
    ref = _eqx_linear(layer)
    x = _normal(batch + (6,))
    f = ref
    for _ in batch:
        f = jax.vmap(f)
    np.testing.assert_allclose(layer(x), f(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "param_dtype,dtype,x_dtype,out",
    [
        (jnp.float32, None, jnp.float32, jnp.float32),
        (jnp.float32, None, jnp.bfloat16, jnp.float32),
        (jnp.bfloat16, None, jnp.bfloat16, jnp.bfloat16),
        (jnp.float32, jnp.bfloat16, jnp.float32, jnp.bfloat16),
        (jnp.float16, jnp.float32, jnp.float16, jnp.float32),
    ],
)
def test_linear_dtypes(param_dtype, dtype, x_dtype, out):
    layer = Linear(3, 2, dtype=dtype, param_dtype=param_dtype, rngs=Rngs(0))
    assert layer.kernel.dtype == param_dtype and layer.bias.dtype == param_dtype
    x = _normal((4, 3), dtype=x_dtype)
    y = layer(x)
    assert y.dtype == out
    expect = np.asarray(x, np.float32) @ np.asarray(layer.kernel[...], np.float32)
    np.testing.assert_allclose(np.asarray(y, np.float32), expect, rtol=2e-2, atol=2e-2)


def test_linear_metadata_custom_init_and_dot_general():
    calls = []

    def dot_general(*args, **kwargs):
        calls.append(kwargs.get("precision"))
        return jax.lax.dot_general(*args, **kwargs)

    layer = Linear(
        2,
        3,
        kernel_init=initializers.ones_init(),
        bias_init=initializers.constant(0.5),
        dot_general=dot_general,
        precision="highest",
        kernel_metadata={"sharding": ("a", None)},
        rngs=Rngs(0),
    )
    assert layer.kernel.out_sharding == ("a", None)
    np.testing.assert_allclose(layer(jnp.array([1.0, 2.0])), [3.5, 3.5, 3.5])
    assert calls == ["highest"]


def test_linear_gradient_as_pytree():
    layer = Linear(3, 2, rngs=Rngs(0))
    x = _normal((5, 3))
    grads = jax.grad(lambda m: m(x).sum())(layer)
    np.testing.assert_allclose(grads.kernel[...], np.tile(x.sum(0)[:, None], (1, 2)), rtol=1e-5)
    np.testing.assert_allclose(grads.bias[...], [5.0, 5.0])


@pytest.mark.parametrize("shape", [(2, 4), (2, 3, 1), ()])
def test_linear_wrong_input_shape(shape):
    layer = Linear(3, 2, rngs=Rngs(0))
    with pytest.raises(ValueError, match=r"Linear: expected inputs of shape \(\.\.\., 3\)"):
        layer(jnp.ones(shape))


# -- LinearGeneral ---------------------------------------------------------------------
def test_linear_general_contracts_several_axes():
    layer = LinearGeneral((2, 3), (4, 5), axis=(-2, -1), bias_init=initializers.normal(1.0), rngs=Rngs(0))
    assert layer.kernel.shape == (2, 3, 4, 5) and layer.bias.shape == (4, 5)
    x = _normal((7, 2, 3))
    expect = np.einsum("nab,abcd->ncd", x, layer.kernel[...]) + np.asarray(layer.bias[...])
    np.testing.assert_allclose(layer(x), expect, rtol=1e-5, atol=1e-5)


def test_linear_general_middle_axis_and_int_features():
    layer = LinearGeneral(3, 4, axis=1, rngs=Rngs(0))
    assert layer.in_features == (3,) and layer.out_features == (4,)
    x = _normal((2, 3, 5))
    expect = np.einsum("nim,io->nmo", x, layer.kernel[...])
    np.testing.assert_allclose(layer(x), expect, rtol=1e-5, atol=1e-5)


def test_linear_general_batch_axis():
    layer = LinearGeneral(3, (4,), batch_axis={0: 2}, bias_init=initializers.normal(1.0), rngs=Rngs(0))
    assert layer.kernel.shape == (2, 3, 4) and layer.bias.shape == (2, 4)
    x = _normal((2, 6, 3))
    expect = np.einsum("bni,bio->bno", x, layer.kernel[...]) + np.asarray(layer.bias[...])[:, None]
    np.testing.assert_allclose(layer(x), expect, rtol=1e-5, atol=1e-5)


def test_linear_general_init_uses_flattened_fan_in():
    layer = LinearGeneral((20, 30), 50, axis=(-2, -1), rngs=Rngs(0))
    std = float(layer.kernel[...].std())
    assert abs(std - 1 / np.sqrt(600)) < 0.1 / np.sqrt(600)


def test_linear_general_errors():
    with pytest.raises(ValueError, match=r"LinearGeneral: in_features \(2, 3\) and axis \(-1,\)"):
        LinearGeneral((2, 3), 4, rngs=Rngs(0))
    with pytest.raises(ValueError, match=r"LinearGeneral: batch_axis keys \[1\] must be"):
        LinearGeneral(3, 4, batch_axis={1: 2}, rngs=Rngs(0))
    layer = LinearGeneral((2, 3), 4, axis=(-2, -1), rngs=Rngs(0))
    with pytest.raises(ValueError, match=r"LinearGeneral: expected inputs with sizes \(2, 3\)"):
        layer(jnp.ones((5, 3, 2)))
    with pytest.raises(ValueError, match=r"LinearGeneral: axis -2 is out of range"):
        layer(jnp.ones((3,)))


# -- Einsum ------------------------------------------------------------------------------
def test_einsum_matches_jnp_einsum_with_bias():
    layer = Einsum("nta,hab->nthb", (8, 2, 4), (8, 4), bias_init=initializers.normal(1.0), rngs=Rngs(0))
    assert layer.kernel.shape == (8, 2, 4) and layer.bias.shape == (8, 4)
    x = _normal((3, 5, 2))
    expect = np.einsum("nta,hab->nthb", x, layer.kernel[...]) + np.asarray(layer.bias[...])
    np.testing.assert_allclose(layer(x), expect, rtol=1e-5, atol=1e-5)


def test_einsum_ellipsis_and_call_time_string():
    layer = Einsum("...a, ab -> ...b", (3, 4), (4,), bias_init=initializers.ones_init(), rngs=Rngs(0))
    x = _normal((2, 5, 3))
    expect = np.asarray(x) @ np.asarray(layer.kernel[...]) + 1.0
    np.testing.assert_allclose(layer(x), expect, rtol=1e-5, atol=1e-5)
    y = layer(_normal((3, 7)), einsum_str="an,ab->bn")
    np.testing.assert_allclose(y.shape, (4, 7))
    no_bias = Einsum("ij,jk->ik", (3, 2), rngs=Rngs(0))
    assert no_bias.bias is None


def test_einsum_bias_on_kernel_ellipsis_axes():
    # The kernel's `...` axes are kept in the output, so the bias covers them too.
    layer = Einsum("d...ab,bc...->ad...c", (4, 5, 6, 7), (6, 7, 5), rngs=Rngs(0))
    layer.bias[...] = jnp.arange(210.0).reshape(6, 7, 5)
    x = jax.random.normal(jax.random.key(1), (8, 6, 7, 3, 4))
    expected = jnp.einsum("d...ab,bc...->ad...c", x, layer.kernel[...]) + layer.bias[...]
    y = layer(x)
    assert y.shape == (3, 8, 6, 7, 5)
    np.testing.assert_allclose(y, expected, rtol=1e-6)
    # kernel ellipsis shorter than the output's: bias lines up on the right
    layer = Einsum("...a,a...->...", (3, 4), (4,), rngs=Rngs(0))
    layer.bias[...] = jnp.arange(4.0)
    x = jax.random.normal(jax.random.key(2), (2, 4, 3))
    expected = jnp.einsum("...a,a...->...", x, layer.kernel[...]) + jnp.arange(4.0)
    np.testing.assert_allclose(layer(x), expected, rtol=1e-6)


def test_einsum_errors():
    with pytest.raises(ValueError, match=r"Einsum: einsum_str 'ij,jk' must be explicit"):
        Einsum("ij,jk", (2, 3), rngs=Rngs(0))
    with pytest.raises(ValueError, match=r"Einsum: .* exactly two operands"):
        Einsum("ij,jk,kl->il", (2, 3), rngs=Rngs(0))
    with pytest.raises(ValueError, match=r"Einsum: the kernel operand 'jk' .* kernel_shape \(2, 3, 4\)"):
        Einsum("ij,jk->ik", (2, 3, 4), rngs=Rngs(0))
    layer = Einsum("ij,jk->ik", (2, 3), (5,), rngs=Rngs(0))
    with pytest.raises(ValueError, match=r"Einsum: bias of shape \(5,\) .* expected \(3,\)"):
        layer(jnp.ones((4, 2)))
    with pytest.raises(ValueError, match=r"must be explicit"):
        layer(jnp.ones((4, 2)), einsum_str="ij,jk")


# -- Embed --------------------------------------------------------------------------------
def test_embed_param_and_lookup_matches_equinox():
    table = Embed(10, 4, rngs=Rngs(0))
    assert table.embedding.shape == (10, 4) and type(table.embedding) is Param
    assert list(core.state(table).flat_dict()) == [("embedding",)]
    ref = eqx.nn.Embedding(weight=table.embedding[...])
    idx = jnp.array([[0, 3, 9], [1, 1, 2]])
    np.testing.assert_array_equal(table(idx), jax.vmap(jax.vmap(ref))(idx))
    np.testing.assert_array_equal(table(jnp.array(7, jnp.uint8)), ref(jnp.array(7)))


def test_embed_default_init_std_and_attend():
    table = Embed(2000, 50, rngs=Rngs(0))
    # variance_scaling(1, fan_in, normal, out_axis=0): fan_in = features
    assert abs(float(table.embedding[...].std()) - 1 / np.sqrt(50)) < 0.01
    q = _normal((3, 50))
    np.testing.assert_allclose(
        table.attend(q), np.asarray(q) @ np.asarray(table.embedding[...]).T, rtol=1e-4, atol=1e-4
    )


def test_embed_dtype_and_single_entry():
    table = Embed(5, 3, dtype=jnp.bfloat16, rngs=Rngs(0))
    assert table.embedding.dtype == jnp.float32
    assert table(jnp.array([1])).dtype == jnp.bfloat16
    assert table.attend(jnp.ones(3)).dtype == jnp.bfloat16
    single = Embed(1, 3, rngs=Rngs(0))
    np.testing.assert_array_equal(
        single(jnp.zeros((2, 2), jnp.int32)), np.broadcast_to(single.embedding[...][0], (2, 2, 3))
    )


def test_embed_errors():
    table = Embed(5, 3, rngs=Rngs(0))
    with pytest.raises(
        ValueError, match=r"Embed: inputs must be integer indices in \[0, 5\), got dtype float32"
    ):
        table(jnp.array([1.0]))
    with pytest.raises(ValueError, match=r"Embed.attend: expected query of shape \(\.\.\., 3\)"):
        table.attend(jnp.ones((2, 4)))


# -- PReLU ----------------------------------------------------------------------------------
def test_prelu():
    layer = PReLU()
    assert layer.negative_slope.shape == () and type(layer.negative_slope) is Param
    np.testing.assert_allclose(layer.negative_slope[...], 0.01)
    x = jnp.array([-2.0, -0.5, 0.0, 3.0])
    np.testing.assert_allclose(layer(x), [-0.02, -0.005, 0.0, 3.0], rtol=1e-6)
    layer.negative_slope[...] = jnp.array(0.5)
    np.testing.assert_allclose(layer(x), [-1.0, -0.25, 0.0, 3.0])
    half = PReLU(0.25, param_dtype=jnp.bfloat16)
    assert half.negative_slope.dtype == jnp.bfloat16
    assert half(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16
    assert PReLU(dtype=jnp.float16)(x).dtype == jnp.float16
    # without dtype the float32 slope takes the inputs' dtype (as Flax and Linen)
    x16 = jnp.linspace(-10, 10, 20, dtype=jnp.float16)
    y = PReLU(0.02)(x16)
    assert y.dtype == jnp.float16
    np.testing.assert_array_equal(y, jnp.where(x16 >= 0, x16, jnp.float16(0.02) * x16))


def test_docstring_examples():
    import doctest

    from nnxfn.nn import linear as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
