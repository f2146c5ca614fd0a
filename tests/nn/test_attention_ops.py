"""Value tests for nnxfn.nn.attention_ops against einsum/softmax references."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnxfn.nn import attention_ops as att

KEYS = jax.random.split(jax.random.key(0), 6)


def _qkv(
    batch: tuple[int, ...] = (2,),
    q_len: int = 5,
    kv_len: int = 7,
    heads: int = 4,
    kv_heads: int = 4,
    depth: int = 8,
    v_depth: int = 8,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Random query/key/value with Flax's [batch..., len, heads, depth] layout."""
    q = jax.random.normal(KEYS[0], batch + (q_len, heads, depth))
    k = jax.random.normal(KEYS[1], batch + (kv_len, kv_heads, depth))
    v = jax.random.normal(KEYS[2], batch + (kv_len, kv_heads, v_depth))
    return q, k, v


def ref_weights(q: jax.Array, k: jax.Array, bias: Any = None, mask: Any = None) -> jax.Array:
    """Plain reference: softmax(q k^T / sqrt(d) + bias), masked with finfo.min."""
    k = jnp.repeat(k, q.shape[-2] // k.shape[-2], axis=-2)
    logits = jnp.einsum("...qhd,...khd->...hqk", q, k) / np.sqrt(q.shape[-1])
    if bias is not None:
        logits = logits + bias
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    return jax.nn.softmax(logits, axis=-1)


def ref_attention(q: jax.Array, k: jax.Array, v: jax.Array, **kw: Any) -> jax.Array:
    """Reference output: einsum of reference weights with (head-repeated) value."""
    w = ref_weights(q, k, **kw)
    v = jnp.repeat(v, q.shape[-2] // v.shape[-2], axis=-2)
    return jnp.einsum("...hqk,...khd->...qhd", w, v)


@pytest.mark.parametrize("batch", [(), (2,), (2, 3)])
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_weights_and_output_match_reference(batch: tuple[int, ...], kv_heads: int) -> None:
    """Weights/outputs equal the einsum reference for any batch rank and GQA."""
    q, k, v = _qkv(batch, kv_heads=kv_heads, v_depth=6)
    w = att.dot_product_attention_weights(q, k)
    assert w.shape == batch + (4, 5, 7)
    np.testing.assert_allclose(w, ref_weights(q, k), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(w.sum(-1), np.ones(w.shape[:-1]), rtol=1e-5)
    out = att.dot_product_attention(q, k, v)
    assert out.shape == batch + (5, 4, 6)
    np.testing.assert_allclose(out, ref_attention(q, k, v), rtol=1e-5, atol=1e-5)


def test_mask_and_bias_match_reference() -> None:
    """Bias is added to logits; False mask entries get zero weight."""
    q, k, v = _qkv()
    bias = jax.random.normal(KEYS[3], (2, 4, 5, 7))
    mask = jax.random.bernoulli(KEYS[4], 0.6, (2, 1, 5, 7)).at[..., 0].set(True)
    w = att.dot_product_attention_weights(q, k, bias=bias, mask=mask)
    np.testing.assert_allclose(w, ref_weights(q, k, bias=bias, mask=mask), rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(w)[np.broadcast_to(~np.asarray(mask), w.shape)] == 0.0)
    out = att.dot_product_attention(q, k, v, bias=bias, mask=mask.astype(jnp.float32))
    np.testing.assert_allclose(out, ref_attention(q, k, v, bias=bias, mask=mask), rtol=1e-5, atol=1e-5)


def test_fully_masked_row_is_uniform() -> None:
    """A query row with nothing to attend to gets uniform weights (finfo.min fill)."""
    q, k, _ = _qkv()
    mask = np.ones((2, 1, 5, 7), bool)
    mask[:, :, 2, :] = False
    w = np.asarray(att.dot_product_attention_weights(q, k, mask=mask))
    np.testing.assert_allclose(w[:, :, 2, :], np.full((2, 4, 7), 1 / 7), rtol=1e-6)


@pytest.mark.parametrize("kv_heads", [4, 2])
@pytest.mark.parametrize("opts", ["plain", "mask", "bias", "causal"])
def test_matches_jax_nn_dot_product_attention(kv_heads: int, opts: str) -> None:
    """Agrees with jax.nn.dot_product_attention (4-D, same depth)."""
    q, k, v = _qkv(kv_heads=kv_heads, q_len=7)
    kw: dict[str, Any] = {}
    if opts == "mask":
        kw["mask"] = jax.random.bernoulli(KEYS[4], 0.7, (2, 1, 7, 7)).at[..., 0].set(True)
    elif opts == "bias":
        kw["bias"] = jax.random.normal(KEYS[3], (1, 4, 7, 7))
    ours = att.dot_product_attention(q, k, v, is_causal=opts == "causal", **kw)
    ref = jax.nn.dot_product_attention(q, k, v, is_causal=opts == "causal", **kw)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("batch", "kv_heads", "mask_shape"),
    [
        ((), 4, (1, 5, 7)),
        ((2,), 2, (2, 1, 5, 7)),
        ((2, 3), 4, (1, 1, 1, 5, 7)),
        ((2, 3), 1, (3, 4, 5, 7)),
        ((2, 3), 2, (2, 3, 1, 5, 7)),
    ],
)
def test_jax_fused_path_equals_einsum_path(
    batch: tuple[int, ...], kv_heads: int, mask_shape: tuple[int, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without dropout, sown weights or a precision, `dot_product_attention` computes through
    `jax.nn.dot_product_attention` (batch dims flattened, masks broadcast); the result equals
    the einsum path's (taken with an explicit precision) and the reference."""
    q, k, v = _qkv(batch, kv_heads=kv_heads)
    mask = jax.random.bernoulli(KEYS[4], 0.7, mask_shape).at[..., 0].set(True)
    bias = jax.random.normal(KEYS[3], (4, 5, 7))
    calls: list[tuple[int, ...]] = []
    fused = jax.nn.dot_product_attention

    def spy(query: jax.Array, *args: Any, **kw: Any) -> jax.Array:
        calls.append(query.shape)
        return fused(query, *args, **kw)

    monkeypatch.setattr(jax.nn, "dot_product_attention", spy)
    out = att.dot_product_attention(q, k, v, bias=bias, mask=mask, is_causal=True)
    assert calls == [(int(np.prod(batch)), 5, 4, 8) if len(batch) > 1 else q.shape]
    slow = att.dot_product_attention(q, k, v, bias=bias, mask=mask, is_causal=True, precision="highest")
    assert len(calls) == 1  # an explicit precision takes the einsum path
    causal = np.tril(np.ones((5, 7), bool))
    ref = ref_attention(q, k, v, bias=bias, mask=np.logical_and(mask, causal))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out, slow, rtol=1e-5, atol=1e-5)
    assert out.shape == q.shape


def test_fused_path_gradients_equal_einsum_path() -> None:
    """Gradients through the fused path equal those through the einsum path."""
    q, k, v = _qkv((2,), q_len=7)
    mask = att.make_causal_mask(jnp.ones((2, 7)))

    def loss(precision: Any) -> Any:
        return lambda q, k, v: (att.dot_product_attention(q, k, v, mask=mask, precision=precision) ** 2).sum()

    fast = jax.grad(loss(None), argnums=(0, 1, 2))(q, k, v)
    slow = jax.grad(loss("highest"), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(fast, slow, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_is_causal_equals_causal_mask() -> None:
    """is_causal=True equals passing make_causal_mask, and combines with a mask."""
    q, k, v = _qkv(q_len=7)
    causal = att.make_causal_mask(jnp.ones((2, 7)))
    np.testing.assert_allclose(
        att.dot_product_attention(q, k, v, is_causal=True),
        att.dot_product_attention(q, k, v, mask=causal),
        rtol=1e-6,
    )
    pad = att.make_attention_mask(jnp.ones((2, 7)), jnp.array([[1] * 5 + [0] * 2] * 2))
    both = att.combine_masks(pad, causal)
    np.testing.assert_allclose(
        att.dot_product_attention_weights(q, k, mask=pad, is_causal=True),
        ref_weights(q, k, mask=both),
        rtol=1e-5,
        atol=1e-6,
    )


def test_dtype_promotion_and_low_precision() -> None:
    """dtype argument casts inputs; bf16 inputs produce bf16 weights/outputs."""
    q, k, v = _qkv()
    qb, kb, vb = (x.astype(jnp.bfloat16) for x in (q, k, v))
    w = att.dot_product_attention_weights(qb, kb)
    out = att.dot_product_attention(qb, kb, vb)
    assert w.dtype == jnp.bfloat16 and out.dtype == jnp.bfloat16
    np.testing.assert_allclose(out.astype(jnp.float32), ref_attention(q, k, v), atol=5e-2)
    assert att.dot_product_attention(q, k, v, dtype=jnp.bfloat16).dtype == jnp.bfloat16
    assert att.dot_product_attention(qb, k, v).dtype == jnp.float32
    qi = jnp.ones((1, 2, 1, 4), jnp.int32)
    assert att.dot_product_attention_weights(qi, qi).dtype == jnp.float32


def test_dropout_scaling_and_broadcast() -> None:
    """Dropout zeroes entries and rescales kept ones by 1/(1-rate)."""
    q, k, v = _qkv(batch=(3,))
    base = np.asarray(att.dot_product_attention_weights(q, k))
    rate = 0.4
    w = np.asarray(att.dot_product_attention_weights(q, k, dropout_rng=KEYS[5], dropout_rate=rate))
    kept = w != 0
    np.testing.assert_allclose(w[kept], base[kept] / (1 - rate), rtol=1e-5)
    # broadcast_dropout: one pattern shared over batch and heads
    assert np.all(kept == kept[:1, :1])
    w2 = np.asarray(
        att.dot_product_attention_weights(
            q, k, dropout_rng=KEYS[5], dropout_rate=rate, broadcast_dropout=False
        )
    )
    kept2 = w2 != 0
    assert not np.all(kept2 == kept2[:1, :1])
    assert abs(kept2.mean() - (1 - rate)) < 0.1
    np.testing.assert_allclose(w2[kept2], base[kept2] / (1 - rate), rtol=1e-5)
    # Same rng gives same result; output uses dropped weights.
    out = att.dot_product_attention(q, k, v, dropout_rng=KEYS[5], dropout_rate=rate)
    np.testing.assert_allclose(out, jnp.einsum("...hqk,...khd->...qhd", w, v), rtol=1e-5, atol=1e-5)


def test_dropout_disabled_when_deterministic_or_rate_zero() -> None:
    """deterministic=True or rate 0 leaves the weights untouched (no rng needed)."""
    q, k, _ = _qkv()
    base = att.dot_product_attention_weights(q, k)
    np.testing.assert_array_equal(
        att.dot_product_attention_weights(q, k, dropout_rate=0.5, deterministic=True), base
    )
    np.testing.assert_array_equal(att.dot_product_attention_weights(q, k, dropout_rng=KEYS[5]), base)


class _RecordingModule:
    """Duck-typed stand-in for an nnx Module recording ``sow`` calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[type, str, jax.Array]] = []

    def sow(self, variable_type: type, name: str, value: jax.Array) -> None:
        self.calls.append((variable_type, name, value))


def test_module_sow_receives_weights() -> None:
    """With module=..., the softmax weights are sown as Intermediate 'attention_weights'."""
    q, k, v = _qkv()
    mod = _RecordingModule()
    out = att.dot_product_attention(q, k, v, module=mod)
    assert len(mod.calls) == 1
    var_type, name, value = mod.calls[0]
    try:
        from nnxfn.facade.variables import Intermediate
    except ImportError:  # facade not built yet: the module uses a placeholder
        Intermediate = att._IntermediateFallback
    assert var_type is Intermediate and name == "attention_weights"
    np.testing.assert_allclose(value, ref_weights(q, k), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out, ref_attention(q, k, v), rtol=1e-5, atol=1e-5)


def test_jit_and_grad() -> None:
    """Attention is jittable and its gradient matches the reference gradient."""
    q, k, v = _qkv()
    f = jax.jit(lambda q, k, v: att.dot_product_attention(q, k, v).sum())
    g = jax.grad(f)(q, k, v)
    g_ref = jax.grad(lambda q: ref_attention(q, k, v).sum())(q)
    np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-5)


def test_make_attention_mask_values() -> None:
    """Padding mask equals the hand-built outer product, shape [b, 1, q, k]."""
    qi = np.array([[1, 1, 0], [1, 0, 0]])
    ki = np.array([[1, 0, 1, 1], [1, 1, 0, 0]])
    m = att.make_attention_mask(qi, ki)
    ref = (qi[:, :, None] * ki[:, None, :])[:, None].astype(np.float32)
    assert m.shape == (2, 1, 3, 4) and m.dtype == jnp.float32
    np.testing.assert_array_equal(m, ref)
    m2 = att.make_attention_mask(qi, ki, pairwise_fn=jnp.greater_equal, extra_batch_dims=2, dtype=jnp.bool_)
    assert m2.shape == (1, 1, 2, 1, 3, 4) and m2.dtype == jnp.bool_
    np.testing.assert_array_equal(m2[0, 0], (qi[:, :, None] >= ki[:, None, :])[:, None])


def test_make_causal_mask_values() -> None:
    """Causal mask is lower-triangular ones with shape [batch..., 1, L, L]."""
    m = att.make_causal_mask(np.zeros((3, 5)))
    assert m.shape == (3, 1, 5, 5) and m.dtype == jnp.float32
    np.testing.assert_array_equal(m, np.broadcast_to(np.tril(np.ones((5, 5), np.float32)), (3, 1, 5, 5)))
    m1 = att.make_causal_mask(np.zeros((4,)), extra_batch_dims=1, dtype=jnp.int32)
    assert m1.shape == (1, 1, 4, 4) and m1.dtype == jnp.int32
    np.testing.assert_array_equal(m1[0, 0], np.tril(np.ones((4, 4), np.int32)))


def test_combine_masks() -> None:
    """combine_masks ANDs the given masks, skips None and returns None if all None."""
    a = np.array([[1, 1, 0], [0, 1, 1]], np.float32)
    b = np.array([[True, False, True], [True, True, True]])
    assert att.combine_masks() is None
    assert att.combine_masks(None, None) is None
    out = att.combine_masks(a, None, b)
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(out, np.logical_and(a, b).astype(np.float32))
    np.testing.assert_array_equal(att.combine_masks(None, b, dtype=jnp.bool_), b)
    c = np.array([[1, 1, 1]], bool)  # broadcasting within the same rank
    np.testing.assert_array_equal(att.combine_masks(a, c), a)


def test_qkv_shape_errors() -> None:
    """Mismatched ranks/shapes raise ValueError naming function, argument and shape."""
    q, k, v = _qkv()
    with pytest.raises(
        ValueError, match=r"dot_product_attention: `key` must have the same rank.*\(7, 4, 8\)"
    ):
        att.dot_product_attention(q, k[0], v)
    with pytest.raises(ValueError, match=r"dot_product_attention_weights: `key` batch dims.*\(3, 7, 4, 8\)"):
        att.dot_product_attention_weights(q, jnp.concatenate([k, k[:1]]))
    with pytest.raises(
        ValueError,
        match=r"`key` depth must equal query depth 8 \(query and key depths must match\).*\(2, 7, 4, 6\)",
    ):
        att.dot_product_attention_weights(q, k[..., :6])
    with pytest.raises(
        ValueError,
        match=r"number of `key` heads must divide the query heads \(4\): .*must be a multiple.*\(2, 7, 3, 8\)",
    ):
        att.dot_product_attention(q, k[..., :3, :], v[..., :3, :])
    with pytest.raises(
        ValueError,
        match=r"dot_product_attention: `value` length must equal key length 7 .*lengths must match.*\(2, 6, 4, 8\)",
    ):
        att.dot_product_attention(q, k, v[:, :6])
    with pytest.raises(ValueError, match=r"number of `value` heads.*\(2, 7, 3, 8\)"):
        att.dot_product_attention(q, k, v[..., :3, :])
    with pytest.raises(ValueError, match=r"`query` must have shape \[batch\.\.\., q_length.*\(5, 8\)"):
        att.dot_product_attention_weights(q[0, :, 0], k[0, :, 0])


def test_mask_bias_and_dropout_errors() -> None:
    """Non-broadcastable mask/bias and missing dropout rng raise ValueError."""
    q, k, v = _qkv()
    with pytest.raises(
        ValueError, match=r"dot_product_attention: `mask` of shape \(2, 1, 5, 6\) does not broadcast"
    ):
        att.dot_product_attention(q, k, v, mask=jnp.ones((2, 1, 5, 6)))
    with pytest.raises(ValueError, match=r"dot_product_attention_weights: `bias` of shape \(3, 4, 5, 7\)"):
        att.dot_product_attention_weights(q, k, bias=jnp.ones((3, 4, 5, 7)))
    with pytest.raises(ValueError, match=r"`dropout_rng` is required when dropout_rate=0.1"):
        att.dot_product_attention(q, k, v, dropout_rate=0.1)


def test_mask_helper_errors() -> None:
    """Mask helpers validate their inputs."""
    with pytest.raises(
        ValueError, match=r"combine_masks: all `masks` must have the same rank.*\(2, 3\).*\(3,\)"
    ):
        att.combine_masks(np.ones((2, 3)), np.ones((3,)))
    with pytest.raises(ValueError, match=r"make_attention_mask: batch dims.*\(2, 3\) and \(3, 4\)"):
        att.make_attention_mask(np.ones((2, 3)), np.ones((3, 4)))
    with pytest.raises(ValueError, match=r"make_attention_mask: `query_input` and `key_input`.*\(\)"):
        att.make_attention_mask(np.float32(1.0), np.ones((3,)))
    with pytest.raises(
        ValueError, match=r"make_causal_mask: `x` must have shape \[batch\.\.\., length\], got shape \(\)"
    ):
        att.make_causal_mask(np.float32(1.0))
    with pytest.raises(ValueError, match=r"`extra_batch_dims` must be >= 0, got -1"):
        att.make_attention_mask(np.ones((3,)), np.ones((3,)), extra_batch_dims=-1)
