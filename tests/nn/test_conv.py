"""Conv and ConvTranspose against Equinox and jax.lax, with copied weights.

Equinox is channels-first without a batch dim and keeps kernels as
`(out, in, *spatial)`; nnxfn (like Flax) is channels-last with kernels
`(*spatial, in, out)`, so weights are transposed and inputs moved.
"""

from __future__ import annotations

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from nnxfn import core
from nnxfn.facade.rngs import Rngs
from nnxfn.facade.variables import Param
from nnxfn.nn import initializers
from nnxfn.nn.conv import Conv, ConvTranspose


def _normal(shape, seed=0, dtype=jnp.float32):
    return jax.random.normal(jax.random.key(seed), shape, dtype)


def _channels_first(fn, x):
    """Apply a channels-first unbatched `fn` to channels-last batched `x`."""
    y = jax.vmap(fn)(jnp.moveaxis(x, -1, 1))
    return jnp.moveaxis(y, 1, -1)


def _oi_spatial(kernel):
    """(*spatial, a, b) -> (b, a, *spatial)."""
    r = kernel.ndim - 2
    return jnp.transpose(kernel, (r + 1, r) + tuple(range(r)))


def _eqx_conv(layer: Conv, padding, padding_mode="ZEROS"):
    r = len(layer.kernel_size)
    ref = eqx.nn.Conv(
        r,
        layer.in_features,
        layer.out_features,
        layer.kernel_size,
        layer.strides,
        padding=padding,
        dilation=layer.kernel_dilation,
        groups=layer.feature_group_count,
        use_bias=layer.use_bias,
        padding_mode=padding_mode,
        key=jax.random.key(9),
    )
    ref = eqx.tree_at(lambda m: m.weight, ref, _oi_spatial(layer.kernel[...]))
    if layer.use_bias:
        ref = eqx.tree_at(lambda m: m.bias, ref, layer.bias[...].reshape((-1,) + (1,) * r))
    return ref


# -- Conv: parameters ------------------------------------------------------------------------
def test_conv_params_match_flax_names_shapes_dtypes():
    conv = Conv(6, 4, (3, 2), feature_group_count=2, rngs=Rngs(0))
    assert sorted(core.state(conv).flat_dict()) == [("bias",), ("kernel",)]
    assert conv.kernel.shape == (3, 2, 3, 4) and conv.bias.shape == (4,)
    assert type(conv.kernel) is Param and conv.kernel.dtype == jnp.float32
    assert Conv(3, 5, 3, rngs=Rngs(0)).kernel.shape == (3, 3, 5)
    assert Conv(3, 5, 3, use_bias=False, rngs=Rngs(0)).bias is None
    half = Conv(3, 5, (2, 2), param_dtype=jnp.bfloat16, rngs=Rngs(0))
    assert half.kernel.dtype == jnp.bfloat16 and half.bias.dtype == jnp.bfloat16
    np.testing.assert_array_equal(conv.bias[...], np.zeros(4))


# -- Conv: numbers vs Equinox --------------------------------------------------------------------
SWEEP = list(
    itertools.product(
        [1, 2],  # spatial rank
        ["SAME", "VALID", 1, "pairs"],  # padding
        [1, 2],  # strides
        [1, 2],  # kernel_dilation
    )
) + [(3, "SAME", 2, 1), (3, "pairs", 1, 2), (3, "VALID", (1, 2, 1), (2, 1, 1))]


@pytest.mark.parametrize("rank,padding,stride,dilation", SWEEP)
def test_conv_matches_equinox(rank, padding, stride, dilation):
    kernel_size = (3, 2, 2)[:rank]
    if padding == "pairs":
        padding = [(1, 0), (0, 2), (2, 1)][:rank]
    conv = Conv(
        4,
        6,
        kernel_size,
        stride,
        padding=padding,
        kernel_dilation=dilation,
        feature_group_count=2,
        bias_init=initializers.normal(1.0),
        rngs=Rngs(1),
    )
    x = _normal((2,) + (7, 6, 5)[:rank] + (4,))
    ref = _eqx_conv(conv, padding)
    np.testing.assert_allclose(conv(x), _channels_first(ref, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel_size,dilation", [((3,), 1), ((4,), 1), ((3, 2), 2), ((2, 2, 3), 1)])
def test_conv_circular_matches_equinox(kernel_size, dilation):
    dilated = [(k - 1) * dilation + 1 for k in kernel_size]
    conv = Conv(3, 2, kernel_size, padding="CIRCULAR", kernel_dilation=dilation, rngs=Rngs(0))
    x = _normal((2,) + (6,) * len(kernel_size) + (3,))
    ref = _eqx_conv(conv, [((k - 1) // 2, k // 2) for k in dilated], padding_mode="CIRCULAR")
    y = conv(x)
    assert y.shape == x.shape[:-1] + (2,)
    np.testing.assert_allclose(y, _channels_first(ref, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k,dilation", [(3, 1), (2, 3), (5, 2)])
def test_conv_causal_matches_left_padded_equinox(k, dilation):
    conv = Conv(3, 2, k, padding="CAUSAL", kernel_dilation=dilation, rngs=Rngs(0))
    x = _normal((2, 9, 3))
    ref = _eqx_conv(conv, [(dilation * (k - 1), 0)])
    y = conv(x)
    np.testing.assert_allclose(y, _channels_first(ref, x), rtol=1e-5, atol=1e-5)
    # causality: output t does not depend on inputs after t
    x2 = x.at[:, 5:].set(100.0)
    np.testing.assert_allclose(conv(x2)[:, :5], y[:, :5], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("input_dilation,stride", [(2, 1), ((2, 3), 2)])
@pytest.mark.parametrize("padding", ["VALID", "SAME", 1])
def test_conv_input_dilation_matches_lax_channels_first(input_dilation, stride, padding):
    conv = Conv(3, 4, (3, 3), stride, padding=padding, input_dilation=input_dilation, rngs=Rngs(0))
    x = _normal((2, 5, 6, 3))
    lhs_dil = (input_dilation,) * 2 if isinstance(input_dilation, int) else input_dilation
    dilated = [(n - 1) * d + 1 for n, d in zip((5, 6), lhs_dil)]
    # lax accepts no string padding with lhs_dilation: the reference spells it out
    # (SAME: output = ceil(dilated / stride), extra padding at the high end).
    if padding == "VALID":
        pads = [(0, 0), (0, 0)]
    elif padding == "SAME":
        pads = []
        for n in dilated:
            total = max((-(-n // stride) - 1) * stride + 3 - n, 0)
            pads.append((total // 2, total - total // 2))
    else:
        pads = [(1, 1), (1, 1)]
    ref = lax.conv_general_dilated(
        jnp.moveaxis(x, -1, 1),
        _oi_spatial(conv.kernel[...]),
        (stride, stride),
        pads,
        lhs_dilation=lhs_dil,
        dimension_numbers=("NCHW", "OIHW", "NCHW"),
    )
    np.testing.assert_allclose(conv(x), jnp.moveaxis(ref, 1, -1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [(), (5,), (2, 3)])
def test_conv_batch_dims_flattened_and_restored(batch):
    conv = Conv(3, 4, (3, 3), 2, rngs=Rngs(0))
    x = _normal(batch + (6, 6, 3))
    y = conv(x)
    assert y.shape == batch + (3, 3, 4)
    flat = conv(x.reshape((-1, 6, 6, 3)))
    np.testing.assert_allclose(y.reshape(flat.shape), flat, rtol=1e-6)


def test_conv_mask_zeroes_kernel_entries():
    mask = jnp.zeros((3, 3, 2, 4)).at[1, 1].set(1.0)
    conv = Conv(2, 4, (3, 3), mask=mask, use_bias=False, rngs=Rngs(0))
    x = _normal((1, 5, 5, 2))
    expect = np.asarray(x) @ np.asarray(conv.kernel[...][1, 1])  # only the centre tap
    np.testing.assert_allclose(conv(x), expect, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "param_dtype,dtype,x_dtype,out",
    [
        (jnp.float32, None, jnp.bfloat16, jnp.float32),
        (jnp.bfloat16, None, jnp.bfloat16, jnp.bfloat16),
        (jnp.float32, jnp.bfloat16, jnp.float32, jnp.bfloat16),
        (jnp.float32, None, jnp.float32, jnp.float32),
    ],
)
def test_conv_dtypes(param_dtype, dtype, x_dtype, out):
    conv = Conv(3, 2, (3,), dtype=dtype, param_dtype=param_dtype, rngs=Rngs(0))
    x = _normal((2, 6, 3), dtype=x_dtype)
    y = conv(x)
    assert y.dtype == out
    f32 = Conv(3, 2, (3,), rngs=Rngs(0))
    f32.kernel[...] = conv.kernel[...].astype(jnp.float32)
    np.testing.assert_allclose(np.asarray(y, np.float32), f32(x.astype(jnp.float32)), atol=0.05)


def test_conv_errors():
    conv = Conv(3, 4, (3, 3), rngs=Rngs(0))
    with pytest.raises(ValueError, match=r"Conv: expected inputs of shape \(\*batch, spatial, spatial, 3\)"):
        conv(jnp.ones((2, 5, 5, 2)))
    with pytest.raises(ValueError, match=r"Conv: expected inputs .* got shape \(5, 3\)"):
        conv(jnp.ones((5, 3)))
    with pytest.raises(ValueError, match=r"Conv: padding='CAUSAL' is only defined for 1-D"):
        Conv(3, 4, (3, 3), padding="CAUSAL", rngs=Rngs(0))(jnp.ones((1, 5, 5, 3)))
    with pytest.raises(ValueError, match=r"Conv: invalid padding \[\(1, 2, 3\)\]"):
        Conv(3, 4, (3,), padding=[(1, 2, 3)], rngs=Rngs(0))
    with pytest.raises(ValueError, match=r"Conv: mask must have the kernel's shape \(3, 3, 3, 4\)"):
        Conv(3, 4, (3, 3), mask=jnp.ones((3, 3)), rngs=Rngs(0))
    with pytest.raises(ValueError, match=r"Conv: in_features \(3\) .* feature_group_count \(2\)"):
        Conv(3, 4, (3, 3), feature_group_count=2, rngs=Rngs(0))
    with pytest.raises(ValueError, match=r"Conv: strides=\(1, 2, 3\) must be an int or have one entry"):
        Conv(3, 4, (3, 3), (1, 2, 3), rngs=Rngs(0))(jnp.ones((1, 5, 5, 3)))


# -- ConvTranspose -------------------------------------------------------------------------------
def test_conv_transpose_params():
    layer = ConvTranspose(3, 5, (4, 2), rngs=Rngs(0))
    assert layer.kernel.shape == (4, 2, 3, 5) and layer.bias.shape == (5,)
    swapped = ConvTranspose(3, 5, 4, transpose_kernel=True, use_bias=False, rngs=Rngs(0))
    assert swapped.kernel.shape == (4, 5, 3) and swapped.bias is None
    assert sorted(core.state(layer).flat_dict()) == [("bias",), ("kernel",)]


@pytest.mark.parametrize(
    "transpose_kernel,stride,dilation,padding",
    list(itertools.product([False, True], [1, 2, 3], [1, 2], [0, 1, "SAME"])),
)
def test_conv_transpose_matches_equinox(transpose_kernel, stride, dilation, padding):
    k = (3, 2)
    dilated = [(n - 1) * dilation + 1 for n in k]
    # Equinox takes PyTorch-style padding p (cropped from the full output);
    # lax.conv_transpose takes the padding of the dilated input: k_dilated - 1 - p.
    ours = padding if isinstance(padding, str) else [(n - 1 - padding,) * 2 for n in dilated]
    layer = ConvTranspose(
        3,
        4,
        k,
        stride,
        padding=ours,
        kernel_dilation=dilation,
        transpose_kernel=transpose_kernel,
        bias_init=initializers.normal(1.0),
        rngs=Rngs(0),
    )
    kernel = layer.kernel[...]
    if transpose_kernel:  # lax flips the kernel and swaps its in/out axes
        weight = jnp.flip(jnp.transpose(kernel, (2, 3, 0, 1)), (2, 3))
    else:
        weight = _oi_spatial(kernel)
    ref = eqx.nn.ConvTranspose(2, 3, 4, k, stride, padding=padding, dilation=dilation, key=jax.random.key(0))
    ref = eqx.tree_at(lambda m: m.weight, ref, weight)
    ref = eqx.tree_at(lambda m: m.bias, ref, layer.bias[...].reshape(4, 1, 1))
    x = _normal((2, 7, 6, 3))
    np.testing.assert_allclose(layer(x), _channels_first(ref, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel_size,stride", [((3,), 1), ((3,), 2), ((4,), 2), ((3, 5), 1), ((2, 4), 3)])
def test_conv_transpose_circular_is_adjoint_of_circular_conv(kernel_size, stride):
    """With transpose_kernel=True and Conv's kernel, ConvTranspose is Conv's transpose."""
    conv = Conv(3, 4, kernel_size, stride, padding="CIRCULAR", use_bias=False, rngs=Rngs(0))
    ct = ConvTranspose(
        4, 3, kernel_size, stride, padding="CIRCULAR", transpose_kernel=True, use_bias=False, rngs=Rngs(1)
    )
    ct.kernel[...] = conv.kernel[...]
    x = _normal((2,) + (12,) * len(kernel_size) + (3,))
    y, vjp = jax.vjp(conv, x)
    g = _normal(y.shape, seed=1)
    np.testing.assert_allclose(ct(g), vjp(g)[0], rtol=1e-4, atol=1e-4)


def test_conv_transpose_circular_even_kernel_stride_one_convention():
    # Pinned Flax convention (checked by hand against flax 0.12.8): for an even
    # kernel and stride 1 the "+1" alignment shifts the adjoint by one step.
    conv = Conv(3, 4, 4, padding="CIRCULAR", use_bias=False, rngs=Rngs(0))
    ct = ConvTranspose(4, 3, 4, padding="CIRCULAR", transpose_kernel=True, use_bias=False, rngs=Rngs(1))
    ct.kernel[...] = conv.kernel[...]
    x = _normal((2, 12, 3))
    y, vjp = jax.vjp(conv, x)
    g = _normal(y.shape, seed=1)
    np.testing.assert_allclose(ct(g), jnp.roll(vjp(g)[0], -1, axis=1), rtol=1e-4, atol=1e-4)


def test_conv_transpose_circular_output_size_and_batch_dims():
    ct = ConvTranspose(3, 2, (3, 3), 2, padding="CIRCULAR", rngs=Rngs(0))
    assert ct(_normal((5, 4, 3))).shape == (10, 8, 2)
    assert ct(_normal((2, 3, 5, 4, 3))).shape == (2, 3, 10, 8, 2)


def test_conv_transpose_mask_and_dtype():
    mask = jnp.zeros((3, 2, 4)).at[1].set(1.0)
    ct = ConvTranspose(2, 4, 3, padding="VALID", mask=mask, use_bias=False, rngs=Rngs(0))
    x = _normal((1, 5, 2))
    y = ct(x)  # only the centre tap: output t = x[t - 1] @ kernel[1]
    np.testing.assert_allclose(y[:, 1:6], np.asarray(x) @ np.asarray(ct.kernel[...][1]), atol=1e-5)
    assert ConvTranspose(2, 4, 3, dtype=jnp.bfloat16, rngs=Rngs(0))(x).dtype == jnp.bfloat16


def test_conv_transpose_errors():
    ct = ConvTranspose(3, 4, (3, 3), rngs=Rngs(0))
    with pytest.raises(
        ValueError, match=r"ConvTranspose: expected inputs of shape \(\*batch, spatial, spatial, 3\)"
    ):
        ct(jnp.ones((1, 5, 5, 4)))
    with pytest.raises(ValueError, match=r"ConvTranspose: padding='CAUSAL' is not supported"):
        ConvTranspose(3, 4, 3, padding="CAUSAL", rngs=Rngs(0))
    with pytest.raises(ValueError, match=r"ConvTranspose: mask must have the kernel's shape \(3, 4, 3\)"):
        ConvTranspose(3, 4, 3, transpose_kernel=True, mask=jnp.ones((3, 3, 4)), rngs=Rngs(0))
    with pytest.raises(ValueError, match=r"ConvTranspose: invalid padding"):
        ConvTranspose(3, 4, (3, 3), padding=[1, 2, 3], rngs=Rngs(0))


def test_docstring_examples():
    import doctest

    from nnxfn.nn import conv as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
