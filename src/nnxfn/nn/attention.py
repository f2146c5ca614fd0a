"""Multi-head dot-product attention, with an autoregressive key/value cache.

`query`, `key` and `value` are `LinearGeneral` projections to
`(num_heads, head_dim)` (`(num_kv_heads, head_dim)` for key/value); `out`
maps `(num_heads, head_dim)` back to `out_features`. With `decode=True` the
layer consumes one token per call and writes its key/value into the `Cache`
variables made by `init_cache`.

>>> layer = MultiHeadAttention(2, 8, rngs=Rngs(0))
>>> layer(jnp.ones((1, 5, 8))).shape
(1, 5, 8)
"""

from __future__ import annotations

import typing as tp

import jax.numpy as jnp
from jax import lax

from nnxfn.facade.module import Module
from nnxfn.facade.rngs import Rngs, RngStream
from nnxfn.facade.variables import Cache
from nnxfn.nn import initializers
from nnxfn.nn.attention_ops import (
    PromoteDtypeFn,
    combine_masks,
    dot_product_attention,
    dot_product_attention_weights,
    make_attention_mask,
    make_causal_mask,
    promote_dtype as default_promote_dtype,
)
from nnxfn.nn.linear import LinearGeneral
from nnxfn.nn.normalization import LayerNorm
from nnxfn.nn.types import (
    EMPTY_METADATA,
    Array,
    DotGeneral,
    Dtype,
    Initializer,
    Metadata,
    PrecisionLike,
    ShardingLike,
)

default_kernel_init = initializers.lecun_normal()


def _check_head_counts(num_heads: int, qkv_features: int, num_kv_heads: int) -> None:
    if qkv_features % num_heads != 0:
        raise ValueError(
            f"MultiHeadAttention: qkv_features ({qkv_features}) must be divisible by num_heads ({num_heads})."
        )
    if num_heads % num_kv_heads != 0:
        raise ValueError(
            f"MultiHeadAttention: num_heads ({num_heads}) must be a multiple of "
            f"num_kv_heads ({num_kv_heads})."
        )


class MultiHeadAttention(Module):
    """Multi-head attention (grouped-query when `num_kv_heads < num_heads`).

    `qkv_features`, `out_features` and `in_kv_features` default to
    `in_features`; `head_dim = qkv_features // num_heads`. With
    `normalize_qk=True`, `query_ln`/`key_ln` LayerNorms (scale only) are
    applied to the projected queries and keys.
    """

    def __init__(
        self,
        num_heads: int,
        in_features: int,
        qkv_features: int | None = None,
        out_features: int | None = None,
        num_kv_heads: int | None = None,
        in_kv_features: int | None = None,
        *,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        broadcast_dropout: bool = True,
        dropout_rate: float = 0.0,
        deterministic: bool | None = None,
        precision: PrecisionLike = None,
        kernel_init: Initializer = default_kernel_init,
        out_kernel_init: Initializer | None = None,
        bias_init: Initializer = initializers.zeros,
        out_bias_init: Initializer | None = None,
        use_bias: bool = True,
        attention_fn: tp.Callable[..., Array] = dot_product_attention,
        decode: bool | None = None,
        normalize_qk: bool = False,
        qkv_promote_dtype: PromoteDtypeFn = default_promote_dtype,
        out_promote_dtype: PromoteDtypeFn = default_promote_dtype,
        ln_promote_dtype: PromoteDtypeFn = default_promote_dtype,
        qkv_dot_general: DotGeneral | None = None,
        out_dot_general: DotGeneral | None = None,
        qkv_dot_general_cls: tp.Callable[[], DotGeneral] | None = None,
        out_dot_general_cls: tp.Callable[[], DotGeneral] | None = None,
        rngs: Rngs,
        keep_rngs: bool = True,
        kernel_metadata: Metadata = EMPTY_METADATA,
        out_kernel_metadata: Metadata = EMPTY_METADATA,
        bias_metadata: Metadata = EMPTY_METADATA,
        out_bias_metadata: Metadata = EMPTY_METADATA,
        query_ln_scale_metadata: Metadata = EMPTY_METADATA,
        key_ln_scale_metadata: Metadata = EMPTY_METADATA,
    ):
        qkv_features = in_features if qkv_features is None else qkv_features
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        _check_head_counts(num_heads, qkv_features, num_kv_heads)
        self.num_heads = num_heads
        self.in_features = in_features
        self.qkv_features = qkv_features
        self.out_features = in_features if out_features is None else out_features
        self.in_kv_features = in_features if in_kv_features is None else in_kv_features
        self.num_kv_heads = num_kv_heads
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.broadcast_dropout = broadcast_dropout
        self.dropout_rate = dropout_rate
        self.deterministic = deterministic
        self.precision = precision
        self.use_bias = use_bias
        self.attention_fn = attention_fn
        self.decode = decode
        self.normalize_qk = normalize_qk
        self.qkv_promote_dtype = qkv_promote_dtype
        self.out_promote_dtype = out_promote_dtype
        self.ln_promote_dtype = ln_promote_dtype
        self.head_dim = qkv_features // num_heads
        self.qkv_dot_general, self.out_dot_general = qkv_dot_general, out_dot_general
        self.qkv_dot_general_cls, self.out_dot_general_cls = qkv_dot_general_cls, out_dot_general_cls

        self.query, self.key, self.value = self._qkv_projections(
            kernel_init, bias_init, rngs, kernel_metadata, bias_metadata
        )
        self.query_ln, self.key_ln = self._qk_norms(rngs, query_ln_scale_metadata, key_ln_scale_metadata)
        self.out = self._out_projection(
            out_kernel_init or kernel_init,
            out_bias_init or bias_init,
            rngs,
            out_kernel_metadata,
            out_bias_metadata,
        )
        self.rngs = rngs.dropout.fork() if keep_rngs and dropout_rate > 0 else None
        self.cached_key: Cache | None = None
        self.cached_value: Cache | None = None
        self.cache_index: Cache | None = None

    def _projection(
        self,
        in_features: int | tuple[int, ...],
        out_features: int | tuple[int, ...],
        axis: int | tuple[int, ...],
        kernel_init: Initializer,
        bias_init: Initializer,
        promote_dtype: PromoteDtypeFn,
        dot_general: DotGeneral | None,
        dot_general_cls: tp.Callable[[], DotGeneral] | None,
        rngs: Rngs,
        kernel_metadata: Metadata,
        bias_metadata: Metadata,
    ) -> LinearGeneral:
        return LinearGeneral(
            in_features,
            out_features,
            axis=axis,
            use_bias=self.use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=kernel_init,
            bias_init=bias_init,
            precision=self.precision,
            promote_dtype=promote_dtype,
            dot_general=dot_general,
            dot_general_cls=dot_general_cls,
            rngs=rngs,
            kernel_metadata=kernel_metadata,
            bias_metadata=bias_metadata,
        )

    def _qkv_projections(
        self,
        kernel_init: Initializer,
        bias_init: Initializer,
        rngs: Rngs,
        kernel_metadata: Metadata,
        bias_metadata: Metadata,
    ) -> tuple[LinearGeneral, LinearGeneral, LinearGeneral]:
        """The query, key and value projections `(in, heads, head_dim)`, made in that order."""

        def proj(in_f: int, heads: int) -> LinearGeneral:
            return self._projection(
                in_f,
                (heads, self.head_dim),
                -1,
                kernel_init,
                bias_init,
                self.qkv_promote_dtype,
                self.qkv_dot_general,
                self.qkv_dot_general_cls,
                rngs,
                kernel_metadata,
                bias_metadata,
            )

        query = proj(self.in_features, self.num_heads)
        key = proj(self.in_kv_features, self.num_kv_heads)
        return query, key, proj(self.in_kv_features, self.num_kv_heads)

    def _out_projection(
        self,
        kernel_init: Initializer,
        bias_init: Initializer,
        rngs: Rngs,
        kernel_metadata: Metadata,
        bias_metadata: Metadata,
    ) -> LinearGeneral:
        """The output projection `(heads, head_dim) -> out_features`."""
        return self._projection(
            (self.num_heads, self.head_dim),
            self.out_features,
            (-2, -1),
            kernel_init,
            bias_init,
            self.out_promote_dtype,
            self.out_dot_general,
            self.out_dot_general_cls,
            rngs,
            kernel_metadata,
            bias_metadata,
        )

    def _qk_norms(
        self, rngs: Rngs, query_metadata: Metadata, key_metadata: Metadata
    ) -> tuple[LayerNorm | None, LayerNorm | None]:
        """`query_ln` and `key_ln` when `normalize_qk`, else `(None, None)`."""
        if not self.normalize_qk:
            return None, None
        return self._layer_norm(rngs, query_metadata), self._layer_norm(rngs, key_metadata)

    def _layer_norm(self, rngs: Rngs, scale_metadata: Metadata) -> LayerNorm:
        return LayerNorm(
            self.head_dim,
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            promote_dtype=self.ln_promote_dtype,
            rngs=rngs,
            scale_metadata=scale_metadata,
        )

    def __call__(
        self,
        inputs_q: Array,
        inputs_k: Array | None = None,
        inputs_v: Array | None = None,
        *,
        mask: Array | None = None,
        deterministic: bool | None = None,
        rngs: Rngs | RngStream | None = None,
        sow_weights: bool = False,
        decode: bool | None = None,
        is_causal: bool = False,
        out_sharding: ShardingLike = None,
        qkv_sharding: ShardingLike = None,
    ) -> Array:
        """Attend from `inputs_q` `(..., q_len, in_features)` to `inputs_k`/`inputs_v`
        `(..., kv_len, in_kv_features)` (both default to `inputs_q`).

        `mask` is `(..., num_heads or 1, q_len, kv_len)`, True = attend.
        `qkv_sharding`/`out_sharding`: layouts of the query/key/value projections
        `(..., length, heads, head_dim)` and of the output (PartitionSpecs under
        `jax.set_mesh`, or NamedShardings), passed to their `LinearGeneral`s.
        """
        if inputs_k is None:
            if inputs_v is not None:
                raise ValueError(
                    "MultiHeadAttention: `inputs_k` cannot be None when `inputs_v` is given. "
                    "To use one array for both, pass it as `inputs_k` and leave `inputs_v` None."
                )
            inputs_k = inputs_q
        if inputs_v is None:
            inputs_v = inputs_k
        self._check_features("inputs_q", inputs_q, self.in_features, "in_features")
        self._check_features("inputs_k", inputs_k, self.in_kv_features, "in_kv_features")
        self._check_features("inputs_v", inputs_v, self.in_kv_features, "in_kv_features")

        query = self.query(inputs_q, out_sharding=qkv_sharding)
        key = self.key(inputs_k, out_sharding=qkv_sharding)
        value = self.value(inputs_v, out_sharding=qkv_sharding)
        if self.normalize_qk:
            assert self.query_ln is not None and self.key_ln is not None  # made with normalize_qk
            query = self.query_ln(query)
            key = self.key_ln(key)

        if self.decode if decode is None else decode:
            key, value, mask = self._decode_step(query, key, value, mask)

        deterministic = self._deterministic(deterministic)
        dropout_rng = None
        if not deterministic:
            rngs = rngs if rngs is not None else self.rngs
            if rngs is None:
                raise ValueError(
                    "MultiHeadAttention: dropout is active (deterministic=False, dropout_rate="
                    f"{self.dropout_rate}) but no `rngs` were given. Pass `rngs=nnx.Rngs(dropout=0)` "
                    "to the call, or construct the layer with `keep_rngs=True` (the default)."
                )
            dropout_rng = rngs.dropout() if isinstance(rngs, Rngs) else rngs()

        extra = {"is_causal": True} if is_causal else {}
        x = self.attention_fn(
            query,
            key,
            value,
            mask=mask,
            dropout_rng=dropout_rng,
            dropout_rate=self.dropout_rate,
            broadcast_dropout=self.broadcast_dropout,
            deterministic=deterministic,
            dtype=self.dtype,
            precision=self.precision,
            module=self if sow_weights else None,
            **extra,
        )
        return self.out(x, out_sharding=out_sharding)

    def _check_features(self, name: str, x: Array, want: int, attr: str) -> None:
        shape = jnp.shape(x)
        if len(shape) < 2 or shape[-1] != want:
            raise ValueError(
                f"MultiHeadAttention: expected `{name}` of shape (..., length, {want}) "
                f"({attr}={want}), got shape {shape}."
            )

    def _deterministic(self, deterministic: bool | None) -> bool:
        if self.dropout_rate <= 0.0:
            return True
        if deterministic is None:
            deterministic = self.deterministic
        if deterministic is None:
            raise ValueError(
                f"MultiHeadAttention: dropout_rate={self.dropout_rate} > 0, so `deterministic` "
                "must be set: pass `deterministic=True/False` to the constructor or the call, "
                "or use `model.train()` / `model.eval()`."
            )
        return bool(deterministic)

    def _decode_step(
        self, query: Array, key: Array, value: Array, mask: Array | None
    ) -> tuple[Array, Array, Array | None]:
        """Write one step's key/value at `cache_index`; return the full cache and its mask."""
        if self.cached_key is None or self.cached_value is None or self.cache_index is None:
            raise ValueError(
                "MultiHeadAttention: decode=True needs an autoregressive cache. Call "
                "`layer.init_cache((batch, max_length, in_features))` first."
            )
        cached_key = self.cached_key[...]
        *batch, max_length, heads, depth = cached_key.shape
        expected = (*batch, 1, heads, depth)
        for name, x in (("key", key), ("value", value)):
            if x.shape != expected:
                raise ValueError(
                    f"MultiHeadAttention: decode=True expects one token per call: projected "
                    f"{name} of shape {expected} (batch, 1, num_kv_heads, head_dim) to fit the "
                    f"cache of shape {cached_key.shape}, got {x.shape}. Pass inputs of shape "
                    f"{(*batch, 1, self.in_features)}."
                )
        if query.shape[:-3] != tuple(batch) or query.shape[-3] != 1:
            raise ValueError(
                f"MultiHeadAttention: decode=True expects a query of shape "
                f"{(*batch, 1, self.num_heads, depth)}, got {query.shape}."
            )
        if mask is not None and jnp.ndim(mask) != len(batch) + 3:
            raise ValueError(
                f"MultiHeadAttention: with decode=True `mask` must have rank {len(batch) + 3} "
                f"(batch..., heads, 1, {max_length}), got shape {jnp.shape(mask)}."
            )
        index = self.cache_index[...]
        zero = jnp.zeros((), index.dtype)
        start = (zero,) * len(batch) + (index, zero, zero)
        key = lax.dynamic_update_slice(cached_key, key.astype(cached_key.dtype), start)
        cached_value = self.cached_value[...]
        value = lax.dynamic_update_slice(cached_value, value.astype(cached_value.dtype), start)
        self.cached_key[...] = key
        self.cached_value[...] = value
        self.cache_index[...] = index + 1
        seen = jnp.broadcast_to(jnp.arange(max_length) <= index, (*batch, 1, 1, max_length))
        return key, value, combine_masks(mask, seen)

    def set_view(
        self,
        deterministic: bool | None = None,
        decode: bool | None = None,
        batch_size: int | tp.Sequence[int] | None = None,
        max_length: int | None = None,
    ) -> None:
        """What `nnx.view` sets: `deterministic`, and `decode` (which creates the cache,
        for `batch_size` and `max_length`, if there is none yet)."""
        if deterministic is not None:
            self.deterministic = deterministic
        if decode is None:
            return
        self.decode = decode
        if all(getattr(self, n, None) is not None for n in ("cached_key", "cached_value", "cache_index")):
            return
        if batch_size is None or max_length is None:
            missing = "batch_size" if batch_size is None else "max_length"
            raise TypeError(f"MultiHeadAttention.set_view: {missing!r} must be given to create the cache.")
        batch = (batch_size,) if isinstance(batch_size, int) else tuple(batch_size)
        dtype = jnp.float32 if self.dtype is None else self.dtype
        self.init_cache((*batch, max_length, self.in_features), dtype)

    def init_cache(self, input_shape: tp.Sequence[int], dtype: Dtype = jnp.float32) -> None:
        """Create zeroed `cached_key`/`cached_value` of shape
        `(*batch, max_length, num_kv_heads, head_dim)` and `cache_index = 0`,
        for `input_shape = (*batch, max_length, in_features)`."""
        input_shape = tuple(input_shape)
        if len(input_shape) < 2:
            raise ValueError(
                "MultiHeadAttention.init_cache: `input_shape` must be "
                f"(*batch, max_length, in_features), got {input_shape}."
            )
        shape = (*input_shape[:-1], self.num_kv_heads, self.head_dim)
        self.cached_key = Cache(jnp.zeros(shape, dtype))
        self.cached_value = Cache(jnp.zeros(shape, dtype))
        self.cache_index = Cache(jnp.array(0, dtype=jnp.int32))


__all__ = [
    "MultiHeadAttention",
    "combine_masks",
    "dot_product_attention",
    "dot_product_attention_weights",
    "make_attention_mask",
    "make_causal_mask",
]
