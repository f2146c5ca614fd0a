"""Functional dot-product attention and mask helpers (Flax NNX conventions).

Shapes: ``query`` is ``[batch..., q_length, num_heads, qk_depth]``, ``key`` is
``[batch..., kv_length, num_kv_heads, qk_depth]`` and ``value`` is
``[batch..., kv_length, num_kv_heads, v_depth]``; ``num_heads`` must be a
multiple of ``num_kv_heads`` (grouped-query attention when they differ).
Attention weights are ``[batch..., num_heads, q_length, kv_length]``; masks use
``True``/non-zero = attend and are built as ``[batch..., 1, q_length, kv_length]``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from nnxfn.facade.module import Module
from nnxfn.facade.variables import Intermediate
from nnxfn.nn.dtypes import PromoteDtypeFn, promote_dtype
from nnxfn.nn.types import Array, Dtype, PrecisionLike


def _check_qkv(fn: str, query: Array, key: Array, value: Array | None = None) -> None:
    """Validate query/key(/value) ranks and shapes; raise ValueError naming ``fn``."""
    if query.ndim < 3:
        raise ValueError(
            f"{fn}: `query` must have shape [batch..., q_length, num_heads, "
            f"depth] (rank >= 3), got shape {query.shape}."
        )
    others = [("key", key)] + ([("value", value)] if value is not None else [])
    for name, arr in others:
        if arr.ndim != query.ndim:
            raise ValueError(
                f"{fn}: `{name}` must have the same rank as `query` "
                f"({query.ndim}, query shape {query.shape}), got shape {arr.shape}."
            )
        if arr.shape[:-3] != query.shape[:-3]:
            raise ValueError(
                f"{fn}: `{name}` batch dims must equal query batch dims "
                f"{query.shape[:-3]}, got shape {arr.shape}."
            )
        if query.shape[-2] % arr.shape[-2] != 0:
            raise ValueError(
                f"{fn}: number of `{name}` heads must divide the query heads "
                f"({query.shape[-2]}): query heads must be a multiple of {name} heads, "
                f"got shape {arr.shape}."
            )
    if key.shape[-1] != query.shape[-1]:
        raise ValueError(
            f"{fn}: `key` depth must equal query depth {query.shape[-1]} (query and key "
            f"depths must match), got key shape {key.shape}."
        )
    if value is not None and value.shape[-3] != key.shape[-3]:
        raise ValueError(
            f"{fn}: `value` length must equal key length {key.shape[-3]} (key and value "
            f"lengths must match), got value shape {value.shape}."
        )


def _check_broadcast(fn: str, name: str, arr: Array, target: tuple[int, ...]) -> None:
    """Raise ValueError if ``arr`` cannot broadcast against ``target``."""
    try:
        jnp.broadcast_shapes(arr.shape, target)
    except ValueError:
        raise ValueError(
            f"{fn}: `{name}` of shape {arr.shape} does not broadcast to the "
            f"attention weights shape {target} [batch..., heads, q_length, kv_length]."
        ) from None


def _repeat_heads(x: Array, num_heads: int) -> Array:
    """Repeat the heads axis (-2) of ``x`` so it has ``num_heads`` heads."""
    reps = num_heads // x.shape[-2]
    if reps == 1:
        return x
    sharding = getattr(jax.typeof(x), "sharding", None)  # abstract type: cheap
    mesh = getattr(sharding, "mesh", None)
    if (
        mesh is not None
        and not mesh.empty
        and any(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types)
    ):  # Explicit axes: jnp.repeat needs the layout of its result
        return jnp.repeat(x, reps, axis=-2, out_sharding=sharding)
    return jnp.repeat(x, reps, axis=-2)


def _weights(
    fn: str,
    query: Array,
    key: Array,
    bias: Array | None,
    mask: Array | None,
    broadcast_dropout: bool,
    dropout_rng: Array | None,
    dropout_rate: float,
    deterministic: bool,
    precision: PrecisionLike,
    module: Module | None,
    is_causal: bool,
) -> Array:
    """Attention weights for already promoted and validated query/key."""
    dtype = query.dtype
    key = _repeat_heads(key, query.shape[-2])
    query = query / jnp.sqrt(query.shape[-1]).astype(dtype)
    logits = jnp.einsum("...qhd,...khd->...hqk", query, key, precision=precision)
    if bias is not None:
        bias = jnp.asarray(bias)
        _check_broadcast(fn, "bias", bias, logits.shape)
        logits = logits + bias.astype(dtype)
    keep = None
    if mask is not None:
        mask = jnp.asarray(mask)
        _check_broadcast(fn, "mask", mask, logits.shape)
        keep = mask.astype(jnp.bool_)
    if is_causal:
        q_len, kv_len = logits.shape[-2:]
        causal = jnp.tril(jnp.ones((q_len, kv_len), dtype=jnp.bool_))
        keep = causal if keep is None else jnp.logical_and(keep, causal)
    if keep is not None:
        logits = jnp.where(keep, logits, jnp.finfo(dtype).min)
    # Softmax in at least float32 for accuracy, then back to the compute dtype.
    sm_dtype = jnp.promote_types(dtype, jnp.float32)
    weights = jax.nn.softmax(logits.astype(sm_dtype)).astype(dtype)

    if module is not None:
        module.sow(Intermediate, "attention_weights", weights)

    if not deterministic and dropout_rate > 0.0:
        if dropout_rng is None:
            raise ValueError(
                f"{fn}: `dropout_rng` is required when dropout_rate={dropout_rate} > 0 "
                "and deterministic=False, got None."
            )
        keep_prob = 1.0 - dropout_rate
        if broadcast_dropout:
            # Same dropout pattern for all batch and head positions.
            shape = (1,) * (weights.ndim - 2) + weights.shape[-2:]
        else:
            shape = weights.shape
        kept = jax.random.bernoulli(dropout_rng, keep_prob, shape)
        weights = weights * (kept.astype(dtype) / jnp.asarray(keep_prob, dtype=dtype))
    return weights


def dot_product_attention_weights(
    query: Array,
    key: Array,
    bias: Array | None = None,
    mask: Array | None = None,
    broadcast_dropout: bool = True,
    dropout_rng: Array | None = None,
    dropout_rate: float = 0.0,
    deterministic: bool = False,
    dtype: Dtype | None = None,
    precision: PrecisionLike = None,
    module: Module | None = None,
    promote_dtype: PromoteDtypeFn = promote_dtype,
    is_causal: bool = False,
) -> Array:
    """Softmax attention weights ``[batch..., num_heads, q_length, kv_length]``.

    Computes ``softmax(q k^T / sqrt(depth) + bias)`` where masked positions
    (``mask`` False/0, or above the diagonal if ``is_causal``) get the dtype's
    most negative value, then applies dropout (kept values scaled by
    ``1/(1-rate)``) unless ``deterministic``. If ``module`` is given, the
    weights are sown as ``Intermediate`` under ``'attention_weights'``.
    """
    fn = "dot_product_attention_weights"
    query, key = promote_dtype((jnp.asarray(query), jnp.asarray(key)), dtype=dtype)
    _check_qkv(fn, query, key)
    return _weights(
        fn,
        query,
        key,
        bias,
        mask,
        broadcast_dropout,
        dropout_rng,
        dropout_rate,
        deterministic,
        precision,
        module,
        is_causal,
    )


def dot_product_attention(
    query: Array,
    key: Array,
    value: Array,
    bias: Array | None = None,
    mask: Array | None = None,
    broadcast_dropout: bool = True,
    dropout_rng: Array | None = None,
    dropout_rate: float = 0.0,
    deterministic: bool = False,
    dtype: Dtype | None = None,
    precision: PrecisionLike = None,
    module: Module | None = None,
    promote_dtype: PromoteDtypeFn = promote_dtype,
    is_causal: bool = False,
) -> Array:
    """Dot-product attention output ``[batch..., q_length, num_heads, v_depth]``.

    See :func:`dot_product_attention_weights` for the weights; the output is
    ``einsum('...hqk,...khd->...qhd', weights, value)``. When no dropout is applied, no
    weights are sown (``module`` is None), ``precision`` is None and value and key depths
    agree, the same result comes from `jax.nn.dot_product_attention` (what Flax NNX calls
    then too), whose pattern XLA compiles to faster code.
    """
    fn = "dot_product_attention"
    query, key, value = promote_dtype((jnp.asarray(query), jnp.asarray(key), jnp.asarray(value)), dtype=dtype)
    _check_qkv(fn, query, key, value)
    no_dropout = deterministic or dropout_rate == 0.0
    if no_dropout and module is None and precision is None and value.shape[-1] == key.shape[-1]:
        return _fused(fn, query, key, value, bias, mask, is_causal)
    weights = _weights(
        fn,
        query,
        key,
        bias,
        mask,
        broadcast_dropout,
        dropout_rng,
        dropout_rate,
        deterministic,
        precision,
        module,
        is_causal,
    )
    value = _repeat_heads(value, query.shape[-2])
    return jnp.einsum("...hqk,...khd->...qhd", weights, value, precision=precision)


def _fused(
    fn: str, query: Array, key: Array, value: Array, bias: Array | None, mask: Array | None, is_causal: bool
) -> Array:
    """The same attention by `jax.nn.dot_product_attention` (XLA's fused pattern: the scale
    applied to the logits, softmax in float32), as Flax NNX does when nothing needs the
    weights. Batch dims beyond one are flattened into one, as it takes ``[batch, length,
    heads, depth]``."""
    batch = query.shape[:-3]
    logits_shape = (*batch, query.shape[-2], query.shape[-3], key.shape[-3])
    extras = {"bias": bias, "mask": mask}
    for name, x in extras.items():
        if x is not None:
            x = jnp.asarray(x)
            _check_broadcast(fn, name, x, logits_shape)
            extras[name] = _as_4d(x, batch)
    if extras["mask"] is not None:
        extras["mask"] = extras["mask"].astype(jnp.bool_)
    q, k, v = (x.reshape((-1, *x.shape[-3:])) if len(batch) > 1 else x for x in (query, key, value))
    out = jax.nn.dot_product_attention(q, k, v, extras["bias"], extras["mask"], is_causal=is_causal)
    return out.reshape(query.shape)


def _as_4d(x: Array, batch: tuple[int, ...]) -> Array:
    """A bias or mask ``[batch..., heads, q, kv]`` (dims of 1 broadcasting) as
    ``[batch, heads, q, kv]`` for a query whose batch dims ``batch`` are flattened to one."""
    if len(batch) <= 1 or x.ndim <= 3:
        return x
    lead = x.shape[:-3]
    if all(d == 1 for d in lead):
        return x.reshape((1, *x.shape[-3:]))
    return jnp.broadcast_to(x, (*batch, *x.shape[-3:])).reshape((-1, *x.shape[-3:]))


def make_attention_mask(
    query_input: Array,
    key_input: Array,
    pairwise_fn: Callable[[Array, Array], Array] = jnp.multiply,
    extra_batch_dims: int = 0,
    dtype: Dtype = jnp.float32,
) -> Array:
    """Mask ``[batch..., 1, q_len, kv_len]`` = ``pairwise_fn(q[..., :, None], k[..., None, :])``.

    ``extra_batch_dims`` leading singleton dims are added in front.
    """
    q = jnp.asarray(query_input)
    k = jnp.asarray(key_input)
    if q.ndim < 1 or k.ndim < 1:
        raise ValueError(
            "make_attention_mask: `query_input` and `key_input` must have shape "
            f"[batch..., length], got shapes {q.shape} and {k.shape}."
        )
    try:
        jnp.broadcast_shapes(q.shape[:-1], k.shape[:-1])
    except ValueError:
        raise ValueError(
            "make_attention_mask: batch dims of `query_input` and `key_input` "
            f"must broadcast, got shapes {q.shape} and {k.shape}."
        ) from None
    if extra_batch_dims < 0:
        raise ValueError(f"make_attention_mask: `extra_batch_dims` must be >= 0, got {extra_batch_dims}.")
    mask = pairwise_fn(q[..., :, None], k[..., None, :])
    mask = jnp.expand_dims(mask, axis=-3)
    mask = mask.reshape((1,) * extra_batch_dims + mask.shape)
    return mask.astype(dtype)


def make_causal_mask(x: Array, extra_batch_dims: int = 0, dtype: Dtype = jnp.float32) -> Array:
    """Causal mask ``[batch..., 1, len, len]`` for ``x`` of shape ``[batch..., len]``.

    Position ``i`` may attend to ``j`` iff ``j <= i``.
    """
    x = jnp.asarray(x)
    if x.ndim < 1:
        raise ValueError(f"make_causal_mask: `x` must have shape [batch..., length], got shape {x.shape}.")
    idxs = jnp.broadcast_to(jnp.arange(x.shape[-1], dtype=jnp.int32), x.shape)
    return make_attention_mask(idxs, idxs, jnp.greater_equal, extra_batch_dims=extra_batch_dims, dtype=dtype)


def combine_masks(*masks: Array | None, dtype: Dtype = jnp.float32) -> Array | None:
    """Logical AND of the non-``None`` masks (all of equal rank), cast to ``dtype``.

    Returns ``None`` when every mask is ``None``.
    """
    present = [jnp.asarray(m) for m in masks if m is not None]
    if not present:
        return None
    ranks = {m.ndim for m in present}
    if len(ranks) != 1:
        raise ValueError(
            f"combine_masks: all `masks` must have the same rank, got shapes {[m.shape for m in present]}."
        )
    out = functools.reduce(jnp.logical_and, present)
    return out.astype(dtype)


__all__ = [
    "combine_masks",
    "dot_product_attention",
    "dot_product_attention_weights",
    "make_attention_mask",
    "make_causal_mask",
]
