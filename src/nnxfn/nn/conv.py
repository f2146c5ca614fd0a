"""Convolutions: Conv and ConvTranspose (Flax NNX API, channels-last).

Inputs are `(*batch_dims, *spatial, features)`; several batch dims are
flattened for the convolution and restored, and an input without a batch dim
gets one for the convolution. `kernel` has shape
`kernel_size + (in_features // feature_group_count, out_features)` (Conv) or
`kernel_size + (in_features, out_features)` (ConvTranspose; swapped when
`transpose_kernel=True`); `bias` has shape `(out_features,)`.
"""

from __future__ import annotations

import typing as tp

import jax.numpy as jnp
from jax import lax

from nnxfn.facade.module import Module
from nnxfn.facade.rngs import Rngs
from nnxfn.facade.variables import Param
from nnxfn.nn.dtypes import PromoteDtypeFn, promote_dtype
from nnxfn.nn.common import PreferredKwargs, default_bias_init, default_kernel_init, sharding_kwargs
from nnxfn.nn.types import (
    EMPTY_METADATA,
    Array,
    Dtype,
    Initializer,
    Metadata,
    PrecisionLike,
    ShardingLike,
)

PaddingLike = tp.Union[str, int, tp.Sequence[tp.Union[int, tuple[int, int]]]]


def _int_pair(p: object) -> tuple[int, int] | None:
    """`(p, p)` for an int, `(low, high)` for a sequence of two ints, else None."""
    if isinstance(p, int):
        return p, p
    if isinstance(p, tp.Sequence) and len(p) == 2:
        low, high = p
        if isinstance(low, int) and isinstance(high, int):
            return low, high
    return None


def canonicalize_padding(padding: PaddingLike, rank: int, layer: str = "Conv") -> str | list[tuple[int, int]]:
    """A padding string, or `rank` (low, high) pairs from an int / ints / pairs."""
    if isinstance(padding, str):
        return padding
    if isinstance(padding, int):
        return [(padding, padding)] * rank
    if isinstance(padding, tp.Sequence) and len(padding) == rank:
        pairs = [_int_pair(p) for p in padding]
        found = [pair for pair in pairs if pair is not None]
        if len(found) == rank:
            return found
    raise ValueError(
        f"{layer}: invalid padding {padding!r}. Use 'SAME', 'VALID', 'CIRCULAR', "
        f"'CAUSAL', an int, or a sequence of {rank} ints or (low, high) pairs."
    )


def _broadcast(x: int | tp.Sequence[int] | None, rank: int, name: str, layer: str) -> tuple[int, ...]:
    if x is None:
        x = 1
    if isinstance(x, int):
        return (x,) * rank
    x = tuple(x)
    if len(x) != rank:
        raise ValueError(
            f"{layer}: {name}={x} must be an int or have one entry per spatial "
            f"dimension ({rank}, from kernel_size)."
        )
    return x


def _dimension_numbers(ndim: int) -> lax.ConvDimensionNumbers:
    """Channels-last inputs/outputs, kernel `(*spatial, in, out)`."""
    lhs = (0, ndim - 1) + tuple(range(1, ndim - 1))
    rhs = (ndim - 1, ndim - 2) + tuple(range(0, ndim - 2))
    return lax.ConvDimensionNumbers(lhs, rhs, lhs)


def _flatten_batch(
    inputs: Array, rank: int, in_features: int, layer: str
) -> tuple[Array, tuple[int, ...] | None]:
    """Check `(*batch, *spatial, in_features)` and reshape to one batch axis."""
    if inputs.ndim < rank + 1 or inputs.shape[-1] != in_features:
        spatial = ", ".join(["spatial"] * rank)
        raise ValueError(
            f"{layer}: expected inputs of shape (*batch, {spatial}, {in_features}) "
            f"(channels last, {rank} spatial dims from kernel_size, in_features="
            f"{in_features}), got shape {inputs.shape}."
        )
    n_batch = inputs.ndim - (rank + 1)
    if n_batch == 1:
        return inputs, None
    batch_shape = inputs.shape[:n_batch]
    return jnp.reshape(inputs, (-1,) + inputs.shape[n_batch:]), batch_shape


def _restore_batch(y: Array, batch_shape: tuple[int, ...] | None) -> Array:
    return y if batch_shape is None else jnp.reshape(y, batch_shape + y.shape[1:])


def _masked_kernel(layer: str, kernel: Array, mask: Array | None) -> Array:
    if mask is None:
        return kernel
    if tuple(mask.shape) != tuple(kernel.shape):
        raise ValueError(
            f"{layer}: mask must have the kernel's shape {tuple(kernel.shape)}, got {tuple(mask.shape)}."
        )
    return kernel * mask


def _add_bias(y: Array, bias: Array | None) -> Array:
    return y if bias is None else y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))


class Conv(Module):
    """A convolution over channels-last inputs (1-D, 2-D, 3-D, ...).

    >>> conv = Conv(3, 8, (3, 3), rngs=Rngs(0))
    >>> conv(jnp.ones((2, 16, 16, 3))).shape
    (2, 16, 16, 8)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | tp.Sequence[int],
        strides: None | int | tp.Sequence[int] = 1,
        *,
        padding: PaddingLike = "SAME",
        input_dilation: None | int | tp.Sequence[int] = 1,
        kernel_dilation: None | int | tp.Sequence[int] = 1,
        feature_group_count: int = 1,
        use_bias: bool = True,
        mask: Array | None = None,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: PrecisionLike = None,
        kernel_init: Initializer = default_kernel_init,
        bias_init: Initializer = default_bias_init,
        conv_general_dilated: tp.Callable[..., Array] = lax.conv_general_dilated,
        promote_dtype: PromoteDtypeFn = promote_dtype,
        preferred_element_type: Dtype | None = None,
        rngs: Rngs,
        kernel_metadata: Metadata = EMPTY_METADATA,
        bias_metadata: Metadata = EMPTY_METADATA,
    ):
        kernel_size = (kernel_size,) if isinstance(kernel_size, int) else tuple(kernel_size)
        if (
            feature_group_count < 1
            or in_features % feature_group_count
            or (out_features % feature_group_count)
        ):
            raise ValueError(
                f"Conv: in_features ({in_features}) and out_features ({out_features}) "
                f"must both be divisible by feature_group_count ({feature_group_count})."
            )
        self.kernel_shape = kernel_size + (in_features // feature_group_count, out_features)
        self.kernel = Param(kernel_init(rngs.params(), self.kernel_shape, param_dtype), **kernel_metadata)
        self.bias: Param | None = None
        if use_bias:
            self.bias = Param(bias_init(rngs.params(), (out_features,), param_dtype), **bias_metadata)
        if mask is not None and tuple(mask.shape) != self.kernel_shape:
            raise ValueError(
                f"Conv: mask must have the kernel's shape {self.kernel_shape}, got {tuple(mask.shape)}."
            )
        canonicalize_padding(padding, len(kernel_size), "Conv")  # validate early
        self.in_features = in_features
        self.out_features = out_features
        self.kernel_size = kernel_size
        self.strides = strides
        self.padding = padding
        self.input_dilation = input_dilation
        self.kernel_dilation = kernel_dilation
        self.feature_group_count = feature_group_count
        self.use_bias = use_bias
        self.mask = mask
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision
        self.conv_general_dilated = conv_general_dilated
        self.promote_dtype = promote_dtype
        self.preferred_element_type = preferred_element_type

    def __call__(self, inputs: Array, out_sharding: ShardingLike = None) -> Array:
        rank = len(self.kernel_size)
        x, batch_shape = _flatten_batch(jnp.asarray(inputs), rank, self.in_features, "Conv")
        strides = _broadcast(self.strides, rank, "strides", "Conv")
        input_dilation = _broadcast(self.input_dilation, rank, "input_dilation", "Conv")
        kernel_dilation = _broadcast(self.kernel_dilation, rank, "kernel_dilation", "Conv")
        padding = canonicalize_padding(self.padding, rank, "Conv")
        if padding in ("CIRCULAR", "REFLECT"):
            dilated = [(k - 1) * d + 1 for k, d in zip(self.kernel_size, kernel_dilation)]
            pads = [(0, 0)] + [((k - 1) // 2, k // 2) for k in dilated] + [(0, 0)]
            x = jnp.pad(x, pads, mode="wrap" if padding == "CIRCULAR" else "reflect")
            padding = "VALID"
        elif padding == "CAUSAL":
            if rank != 1:
                raise ValueError(
                    f"Conv: padding='CAUSAL' is only defined for 1-D convolutions, "
                    f"but kernel_size={self.kernel_size} has {rank} spatial dims."
                )
            x = jnp.pad(x, [(0, 0), (kernel_dilation[0] * (self.kernel_size[0] - 1), 0), (0, 0)])
            padding = "VALID"
        if isinstance(padding, str) and any(d != 1 for d in input_dilation):
            # lax takes no string padding with input dilation: spell it out.
            dilated_in = [(n - 1) * d + 1 for n, d in zip(x.shape[1:-1], input_dilation)]
            window = [(k - 1) * d + 1 for k, d in zip(self.kernel_size, kernel_dilation)]
            padding = lax.padtype_to_pads(dilated_in, window, strides, padding)
        kernel = _masked_kernel("Conv", self.kernel[...], self.mask)
        bias = None if self.bias is None else self.bias[...]
        x, kernel, bias = self.promote_dtype((x, kernel, bias), dtype=self.dtype)
        y = self.conv_general_dilated(
            x,
            kernel,
            strides,
            padding,
            lhs_dilation=input_dilation,
            rhs_dilation=kernel_dilation,
            dimension_numbers=_dimension_numbers(x.ndim),
            feature_group_count=self.feature_group_count,
            precision=self.precision,
            **sharding_kwargs(out_sharding, self.preferred_element_type),
        )
        return _restore_batch(_add_bias(y, bias), batch_shape)


class ConvTranspose(Module):
    """A transposed convolution (as `jax.lax.conv_transpose`), channels last.

    >>> deconv = ConvTranspose(3, 4, (3, 3), strides=2, rngs=Rngs(0))
    >>> deconv(jnp.ones((1, 8, 8, 3))).shape
    (1, 16, 16, 4)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | tp.Sequence[int],
        strides: int | tp.Sequence[int] | None = None,
        *,
        padding: PaddingLike = "SAME",
        kernel_dilation: int | tp.Sequence[int] | None = None,
        use_bias: bool = True,
        mask: Array | None = None,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: PrecisionLike | None = None,
        kernel_init: Initializer = default_kernel_init,
        bias_init: Initializer = default_bias_init,
        transpose_kernel: bool = False,
        promote_dtype: PromoteDtypeFn = promote_dtype,
        preferred_element_type: Dtype | None = None,
        rngs: Rngs,
        kernel_metadata: Metadata = EMPTY_METADATA,
        bias_metadata: Metadata = EMPTY_METADATA,
    ):
        kernel_size = (kernel_size,) if isinstance(kernel_size, int) else tuple(kernel_size)
        io = (out_features, in_features) if transpose_kernel else (in_features, out_features)
        self.kernel_shape = kernel_size + io
        self.kernel = Param(kernel_init(rngs.params(), self.kernel_shape, param_dtype), **kernel_metadata)
        self.bias: Param | None = None
        if use_bias:
            self.bias = Param(bias_init(rngs.params(), (out_features,), param_dtype), **bias_metadata)
        if mask is not None and tuple(mask.shape) != self.kernel_shape:
            raise ValueError(
                f"ConvTranspose: mask must have the kernel's shape {self.kernel_shape}, "
                f"got {tuple(mask.shape)}."
            )
        if padding == "CAUSAL":
            raise ValueError(
                "ConvTranspose: padding='CAUSAL' is not supported; use 'SAME', 'VALID', "
                "'CIRCULAR', an int or (low, high) pairs."
            )
        canonicalize_padding(padding, len(kernel_size), "ConvTranspose")
        self.in_features = in_features
        self.out_features = out_features
        self.kernel_size = kernel_size
        self.strides = strides
        self.padding = padding
        self.kernel_dilation = kernel_dilation
        self.use_bias = use_bias
        self.mask = mask
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision
        self.transpose_kernel = transpose_kernel
        self.promote_dtype = promote_dtype
        self.preferred_element_type = preferred_element_type

    def __call__(self, inputs: Array) -> Array:
        rank = len(self.kernel_size)
        x, batch_shape = _flatten_batch(jnp.asarray(inputs), rank, self.in_features, "ConvTranspose")
        strides = _broadcast(self.strides, rank, "strides", "ConvTranspose")
        kernel_dilation = _broadcast(self.kernel_dilation, rank, "kernel_dilation", "ConvTranspose")
        padding = canonicalize_padding(self.padding, rank, "ConvTranspose")
        circular = padding == "CIRCULAR"
        kernel = _masked_kernel("ConvTranspose", self.kernel[...], self.mask)
        bias = None if self.bias is None else self.bias[...]
        x, kernel, bias = self.promote_dtype((x, kernel, bias), dtype=self.dtype)
        preferred: PreferredKwargs = {}
        if self.preferred_element_type is not None:
            preferred["preferred_element_type"] = self.preferred_element_type
        y = lax.conv_transpose(
            x,
            kernel,
            strides,
            "VALID" if circular else padding,
            rhs_dilation=kernel_dilation,
            transpose_kernel=self.transpose_kernel,
            precision=self.precision,
            **preferred,
        )
        if circular:
            y = self._wrap_circular(y, [n * s for n, s in zip(x.shape[1:-1], strides)])
        return _restore_batch(_add_bias(y, bias), batch_shape)

    def _wrap_circular(self, y: Array, periods: list[int]) -> Array:
        """Fold the full (VALID) output periodically onto `input_size * stride`."""
        pads = []
        for size, period in zip(y.shape[1:-1], periods):
            extra = -(size - period) % (2 * period)
            if self.transpose_kernel:
                pads.append((extra // 2, (extra + 1) // 2))
            else:
                pads.append(((extra + 1) // 2, extra // 2))
        y = jnp.pad(y, [(0, 0)] + pads + [(0, 0)])
        for i, period in enumerate(periods, start=1):
            y = y.reshape(y.shape[:i] + (-1, period) + y.shape[i + 1 :]).sum(axis=i)
        return y
