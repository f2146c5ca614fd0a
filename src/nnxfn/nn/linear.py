"""Dense layers: Linear, LinearGeneral, Einsum, Embed (Flax NNX API); Conv and
ConvTranspose (in `conv.py`) are re-exported here, where Flax has them.

Parameter names, shapes and defaults follow Flax NNX: `Linear` holds
`kernel` (in_features, out_features) and `bias` (out_features,), `Embed`
holds `embedding` (num_embeddings, features). Inputs are promoted with
`promote_dtype` (to `dtype` if given, else the common dtype of inputs and
parameters) before the product.
"""

from __future__ import annotations

import math
import typing as tp
from types import MappingProxyType

import jax
import jax.numpy as jnp
from jax import lax

from nnxfn.facade.module import Module
from nnxfn.facade.rngs import Rngs
from nnxfn.facade.spmd import VariableMetadata
from nnxfn.facade.variables import Param
from nnxfn.nn.dtypes import PromoteDtypeFn, promote_dtype
from nnxfn.nn.types import (
    EMPTY_METADATA,
    Array as Array,
    DotGeneral,
    Dtype as Dtype,
    Initializer as Initializer,
    Metadata,
    PrecisionLike as PrecisionLike,
    Shape as Shape,
    ShardingLike,
)
from nnxfn.nn.common import (
    int_tuple as int_tuple,
    default_bias_init as default_bias_init,
    default_embed_init as default_embed_init,
    default_kernel_init as default_kernel_init,
    normalize_axes as normalize_axes,
    sharding_kwargs as sharding_kwargs,
)
from nnxfn.nn.conv import (  # Flax keeps the convolutions in nnx.nn.linear
    Conv as Conv,
    ConvTranspose as ConvTranspose,
    canonicalize_padding as canonicalize_padding,
)

# `batch_axis` of LinearGeneral: none (read-only, so a shared default is safe).
_NO_BATCH_AXES: tp.Mapping[int, int] = MappingProxyType({})


def _reshape(value: Array | VariableMetadata, shape: tuple[int, ...]) -> Array | VariableMetadata:
    """Reshape an initializer's result, also one wrapped by `nnx.with_partitioning`."""
    if isinstance(value, VariableMetadata):
        return VariableMetadata(jnp.reshape(value.raw_value, shape), value.metadata)
    return jnp.reshape(value, shape)


def _value(var: Param[Array] | None) -> Array | None:
    return None if var is None else var[...]


# -- Linear -----------------------------------------------------------------------
class Linear(Module):
    """`y = x @ kernel + bias` over the last axis of `x`.

    >>> layer = Linear(3, 4, rngs=Rngs(0))
    >>> layer(jnp.ones((2, 3))).shape
    (2, 4)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        use_bias: bool = True,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: PrecisionLike = None,
        kernel_init: Initializer = default_kernel_init,
        bias_init: Initializer = default_bias_init,
        dot_general: DotGeneral = lax.dot_general,
        promote_dtype: PromoteDtypeFn = promote_dtype,
        preferred_element_type: Dtype | None = None,
        rngs: Rngs,
        kernel_metadata: Metadata = EMPTY_METADATA,
        bias_metadata: Metadata = EMPTY_METADATA,
    ):
        self.kernel = Param(
            kernel_init(rngs.params(), (in_features, out_features), param_dtype),
            **kernel_metadata,
        )
        self.bias: Param | None = None
        if use_bias:
            self.bias = Param(bias_init(rngs.params(), (out_features,), param_dtype), **bias_metadata)
        self.in_features = in_features
        self.out_features = out_features
        self.use_bias = use_bias
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision
        self.dot_general = dot_general
        self.promote_dtype = promote_dtype
        self.preferred_element_type = preferred_element_type

    def __call__(self, inputs: Array, out_sharding: ShardingLike = None) -> Array:
        inputs = jnp.asarray(inputs)
        # the kernel's own rows: inside `shard_map` a sharded kernel holds one shard of them
        n_in = self.kernel.shape[0]
        if inputs.ndim == 0 or inputs.shape[-1] != n_in:
            shard = (
                ""
                if n_in == self.in_features
                else f" (this shard of the kernel; in_features={self.in_features})"
            )
            raise ValueError(
                f"Linear: expected inputs of shape (..., {n_in}) "
                f"(last axis = in_features){shard}, got shape {inputs.shape}."
            )
        x, kernel, bias = self.promote_dtype((inputs, self.kernel[...], _value(self.bias)), dtype=self.dtype)
        y = self.dot_general(
            x,
            kernel,
            (((x.ndim - 1,), (0,)), ((), ())),
            precision=self.precision,
            **sharding_kwargs(out_sharding, self.preferred_element_type),
        )
        if bias is not None:
            y = y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
        return y


# -- LinearGeneral ------------------------------------------------------------------
class LinearGeneral(Module):
    """A linear map contracting several input axes into several output axes.

    `kernel` has shape `(*batch_sizes, *in_features, *out_features)` and
    `bias` `(*batch_sizes, *out_features)`; `axis` names the contracted input
    axes and `batch_axis` maps leading input axes to their sizes.

    >>> layer = LinearGeneral((2, 3), 4, axis=(-2, -1), rngs=Rngs(0))
    >>> layer(jnp.ones((5, 2, 3))).shape
    (5, 4)
    """

    def __init__(
        self,
        in_features: int | tp.Sequence[int],
        out_features: int | tp.Sequence[int],
        *,
        axis: int | tp.Sequence[int] = -1,
        batch_axis: tp.Mapping[int, int] = _NO_BATCH_AXES,
        use_bias: bool = True,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        kernel_init: Initializer = default_kernel_init,
        bias_init: Initializer = default_bias_init,
        precision: PrecisionLike = None,
        promote_dtype: PromoteDtypeFn = promote_dtype,
        dot_general: DotGeneral | None = None,
        dot_general_cls: tp.Callable[[], DotGeneral] | None = None,
        preferred_element_type: Dtype | None = None,
        rngs: Rngs,
        kernel_metadata: Metadata = EMPTY_METADATA,
        bias_metadata: Metadata = EMPTY_METADATA,
    ):
        self.in_features = int_tuple(in_features)
        self.out_features = int_tuple(out_features)
        self.axis = int_tuple(axis)
        self.batch_axis = dict(batch_axis)
        if len(self.in_features) != len(self.axis):
            raise ValueError(
                f"LinearGeneral: in_features {self.in_features} and axis {self.axis} "
                "must have the same length (one contracted input axis per in_feature)."
            )
        if self.batch_axis and set(self.batch_axis) != set(range(len(self.batch_axis))):
            raise ValueError(
                f"LinearGeneral: batch_axis keys {sorted(self.batch_axis)} must be the "
                f"consecutive leading axes 0..{len(self.batch_axis) - 1}."
            )
        batch_shape = tuple(self.batch_axis[k] for k in sorted(self.batch_axis))
        n_rows = math.prod(batch_shape) * math.prod(self.in_features)
        kernel_shape = (*batch_shape, *self.in_features, *self.out_features)
        flat = kernel_init(rngs.params(), (n_rows, math.prod(self.out_features)), param_dtype)
        self.kernel = Param(_reshape(flat, kernel_shape), **kernel_metadata)
        self.bias: Param | None = None
        if use_bias:
            bias_shape = (*batch_shape, *self.out_features)
            flat = bias_init(rngs.params(), (math.prod(bias_shape),), param_dtype)
            self.bias = Param(_reshape(flat, bias_shape), **bias_metadata)
        self.use_bias = use_bias
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision
        self.promote_dtype = promote_dtype
        self.dot_general = dot_general
        self.dot_general_cls = dot_general_cls
        self.preferred_element_type = preferred_element_type

    def __call__(self, inputs: Array, out_sharding: ShardingLike = None) -> Array:
        inputs = jnp.asarray(inputs)
        ndim = inputs.ndim
        axis = normalize_axes(self.axis, ndim, "LinearGeneral")
        batch_axis = normalize_axes(sorted(self.batch_axis), ndim, "LinearGeneral")
        got = tuple(inputs.shape[a] for a in axis)
        got_batch = tuple(inputs.shape[a] for a in batch_axis)
        want_batch = tuple(self.batch_axis[k] for k in sorted(self.batch_axis))
        if got != self.in_features or got_batch != want_batch:
            raise ValueError(
                f"LinearGeneral: expected inputs with sizes {self.in_features} on axes "
                f"{self.axis} and {want_batch} on batch axes {tuple(sorted(self.batch_axis))}, "
                f"got shape {inputs.shape}."
            )
        n_batch = len(batch_axis)
        contract = tuple(range(n_batch, n_batch + len(axis)))
        x, kernel, bias = self.promote_dtype((inputs, self.kernel[...], _value(self.bias)), dtype=self.dtype)
        if self.dot_general_cls is not None:
            dot_general = self.dot_general_cls()
        else:
            dot_general = self.dot_general or lax.dot_general
        y = dot_general(
            x,
            kernel,
            ((axis, contract), (batch_axis, tuple(range(n_batch)))),
            precision=self.precision,
            **sharding_kwargs(out_sharding, self.preferred_element_type),
        )
        if bias is not None:
            # dot_general output: batch axes, remaining input axes, out_features.
            free = [inputs.shape[a] if a in batch_axis else 1 for a in range(ndim) if a not in axis]
            y = y + jnp.reshape(bias, (*free, *self.out_features))
        return y


# -- Einsum ----------------------------------------------------------------------------
def _check_einsum_str(einsum_str: str) -> None:
    if "->" not in einsum_str:
        raise ValueError(
            f"Einsum: einsum_str {einsum_str!r} must be explicit and include '->', e.g. 'bi,io->bo'."
        )
    if einsum_str.count(",") != 1:
        raise ValueError(
            f"Einsum: einsum_str {einsum_str!r} must have exactly two operands "
            "(inputs, kernel) separated by one comma, e.g. 'bi,io->bo'."
        )


def _bias_broadcast_shape(einsum_str: str, kernel_shape: Shape, out_ndim: int) -> list[int]:
    """Output-shaped broadcast of the bias: kernel sizes on kept kernel axes, else 1.

    Axes under the kernel's `...` are kept axes too: they line up with the
    trailing axes of the output's `...` (einsum broadcasts ellipses from the right).
    """
    operands, result = einsum_str.split("->")
    rhs = operands.split(",")[1]
    sizes: dict[str, int] = {}
    left, ell_k, right = rhs.partition("...")
    for i, c in enumerate(left):
        sizes[c] = kernel_shape[i]
    for i, c in enumerate(reversed(right)):
        sizes[c] = kernel_shape[len(kernel_shape) - 1 - i]
    kernel_ell = list(kernel_shape[len(left) : len(kernel_shape) - len(right)]) if ell_k else []
    res_left, ell, res_right = result.partition("...")
    n_ell = out_ndim - len(res_left) - len(res_right) if ell else 0
    ell_shape = [1] * (n_ell - len(kernel_ell)) + kernel_ell[len(kernel_ell) - n_ell :] if n_ell else []
    return [sizes.get(c, 1) for c in res_left] + ell_shape + [sizes.get(c, 1) for c in res_right]


class Einsum(Module):
    """`y = einsum(einsum_str, inputs, kernel) + bias`.

    >>> layer = Einsum('nta,hab->nthb', (8, 2, 4), (8, 4), rngs=Rngs(0))
    >>> layer(jnp.ones((16, 11, 2))).shape
    (16, 11, 8, 4)
    """

    def __init__(
        self,
        einsum_str: str,
        kernel_shape: Shape,
        bias_shape: Shape | None = None,
        *,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: PrecisionLike = None,
        kernel_init: Initializer = default_kernel_init,
        bias_init: Initializer = default_bias_init,
        promote_dtype: PromoteDtypeFn = promote_dtype,
        einsum_op: tp.Callable[..., Array] = jnp.einsum,
        preferred_element_type: Dtype | None = None,
        rngs: Rngs,
        kernel_metadata: Metadata = EMPTY_METADATA,
        bias_metadata: Metadata = EMPTY_METADATA,
    ):
        einsum_str = einsum_str.replace(" ", "")
        _check_einsum_str(einsum_str)
        self.kernel_shape = (kernel_shape,) if isinstance(kernel_shape, int) else tuple(kernel_shape)
        if isinstance(bias_shape, int):
            bias_shape = (bias_shape,)
        self.bias_shape = None if bias_shape is None else tuple(bias_shape)
        rhs = einsum_str.split("->")[0].split(",")[1]
        if "..." not in rhs and len(rhs) != len(self.kernel_shape):
            raise ValueError(
                f"Einsum: the kernel operand {rhs!r} of {einsum_str!r} has {len(rhs)} "
                f"axes but kernel_shape {self.kernel_shape} has {len(self.kernel_shape)}."
            )
        self.kernel = Param(kernel_init(rngs.params(), self.kernel_shape, param_dtype), **kernel_metadata)
        self.bias: Param | None = None
        if self.bias_shape is not None:
            self.bias = Param(bias_init(rngs.params(), self.bias_shape, param_dtype), **bias_metadata)
        self.einsum_str = einsum_str
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision
        self.promote_dtype = promote_dtype
        self.einsum_op = einsum_op
        self.preferred_element_type = preferred_element_type

    def __call__(
        self, inputs: Array, einsum_str: str | None = None, out_sharding: ShardingLike = None
    ) -> Array:
        einsum_str = (einsum_str if einsum_str is not None else self.einsum_str).replace(" ", "")
        _check_einsum_str(einsum_str)
        x, kernel, bias = self.promote_dtype(
            (jnp.asarray(inputs), self.kernel[...], _value(self.bias)), dtype=self.dtype
        )
        y = self.einsum_op(
            einsum_str,
            x,
            kernel,
            precision=self.precision,
            **sharding_kwargs(out_sharding, self.preferred_element_type),
        )
        if bias is not None:
            shape = _bias_broadcast_shape(einsum_str, kernel.shape, y.ndim)
            if math.prod(shape) != bias.size:
                raise ValueError(
                    f"Einsum: bias of shape {bias.shape} does not match the kernel axes "
                    f"kept in the output of {einsum_str!r}: expected "
                    f"{tuple(s for s in shape if s != 1)}."
                )
            y = y + jnp.reshape(bias, shape)
        return y


# -- Embed ---------------------------------------------------------------------------------
class Embed(Module):
    """A table of `num_embeddings` vectors of size `features`, looked up by index.

    >>> table = Embed(5, 3, rngs=Rngs(0))
    >>> table(jnp.array([0, 4])).shape, table.attend(jnp.ones(3)).shape
    ((2, 3), (5,))
    """

    def __init__(
        self,
        num_embeddings: int,
        features: int,
        *,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        embedding_init: Initializer = default_embed_init,
        promote_dtype: PromoteDtypeFn = promote_dtype,
        rngs: Rngs,
        embedding_metadata: Metadata = EMPTY_METADATA,
    ):
        self.embedding = Param(
            embedding_init(rngs.params(), (num_embeddings, features), param_dtype),
            **embedding_metadata,
        )
        self.num_embeddings = num_embeddings
        self.features = features
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.promote_dtype = promote_dtype

    def __call__(self, inputs: Array, out_sharding: ShardingLike = None) -> Array:
        inputs = jnp.asarray(inputs)
        if not jnp.issubdtype(inputs.dtype, jnp.integer):
            raise ValueError(
                f"Embed: inputs must be integer indices in [0, {self.num_embeddings}), "
                f"got dtype {inputs.dtype}. Cast them, e.g. `x.astype(jnp.int32)`."
            )
        (embedding,) = self.promote_dtype((self.embedding[...],), dtype=self.dtype, inexact=False)
        if self.num_embeddings == 1:
            return jnp.broadcast_to(embedding, inputs.shape + (self.features,))
        if out_sharding is not None:
            take = jax.sharding.auto_axes(lambda e, i: jnp.take(e, i, axis=0), out_sharding=out_sharding)
            return take(embedding, inputs)
        return jnp.take(embedding, inputs, axis=0)

    def attend(self, query: Array, out_sharding: ShardingLike = None) -> Array:
        """`query @ embedding.T`: similarity of `query` (..., features) to every entry."""
        query = jnp.asarray(query)
        if query.ndim == 0 or query.shape[-1] != self.features:
            raise ValueError(
                f"Embed.attend: expected query of shape (..., {self.features}) "
                f"(last axis = features), got shape {query.shape}."
            )
        query, embedding = self.promote_dtype((query, self.embedding[...]), dtype=self.dtype)
        return jnp.dot(query, embedding.T, **sharding_kwargs(out_sharding, None))
