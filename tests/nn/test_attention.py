"""MultiHeadAttention: parameters, values against Equinox and einsum references,
the autoregressive cache, dropout and error messages."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnxfn import core
from nnxfn.facade.rngs import Rngs
from nnxfn.facade.variables import Cache, Intermediate, Param
from nnxfn.nn.attention import MultiHeadAttention
from nnxfn.nn.attention_ops import make_causal_mask

KEYS = jax.random.split(jax.random.key(42), 8)


def _randomize(model: MultiHeadAttention, seed: int = 0) -> None:
    """Give every Param (biases included) random values."""
    params = core.state(model, Param)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    new = [0.5 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]
    core.update(model, jax.tree.unflatten(treedef, new))


def _reference(m: MultiHeadAttention, xq, xk, mask=None, ln=None):
    """Hand-written multi-head attention with the layer's weights."""
    q = jnp.einsum("...i,ihd->...hd", xq, m.query.kernel[...]) + m.query.bias[...]
    k = jnp.einsum("...i,ihd->...hd", xk, m.key.kernel[...]) + m.key.bias[...]
    v = jnp.einsum("...i,ihd->...hd", xk, m.value.kernel[...]) + m.value.bias[...]
    if ln is not None:
        q, k = ln(q, m.query_ln.scale[...]), ln(k, m.key_ln.scale[...])
    rep = m.num_heads // m.num_kv_heads
    k, v = jnp.repeat(k, rep, axis=-2), jnp.repeat(v, rep, axis=-2)
    logits = jnp.einsum("...qhd,...khd->...hqk", q, k) / np.sqrt(q.shape[-1])
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    w = jax.nn.softmax(logits, axis=-1)
    x = jnp.einsum("...hqk,...khd->...qhd", w, v)
    return jnp.einsum("...hd,hdo->...o", x, m.out.kernel[...]) + m.out.bias[...]


def test_parameter_names_and_shapes():
    m = MultiHeadAttention(2, 8, qkv_features=6, out_features=5, rngs=Rngs(0))
    shapes = {path: v.shape for path, v in core.state(m).flat_state()}
    assert shapes == {
        ("query", "kernel"): (8, 2, 3),
        ("query", "bias"): (2, 3),
        ("key", "kernel"): (8, 2, 3),
        ("key", "bias"): (2, 3),
        ("value", "kernel"): (8, 2, 3),
        ("value", "bias"): (2, 3),
        ("out", "kernel"): (2, 3, 5),
        ("out", "bias"): (5,),
    }
    assert m.head_dim == 3 and m.query_ln is None and m.rngs is None
    assert m.cached_key is None and m.cache_index is None


def test_normalize_qk_dropout_rngs_and_gqa_shapes():
    m = MultiHeadAttention(4, 8, num_kv_heads=2, normalize_qk=True, dropout_rate=0.1, rngs=Rngs(0))
    assert m.key.kernel.shape == (8, 2, 2) and m.query.kernel.shape == (8, 4, 2)
    assert m.query_ln.scale.shape == (2,) and m.key_ln.scale.shape == (2,)
    assert m.query_ln.bias is None
    assert m.rngs is not None
    m = MultiHeadAttention(4, 8, dropout_rate=0.1, keep_rngs=False, rngs=Rngs(0))
    assert m.rngs is None


def test_matches_equinox_multihead_attention():
    heads, d_in, d_out, qk = 2, 8, 5, 6
    m = MultiHeadAttention(heads, d_in, qkv_features=qk, out_features=d_out, rngs=Rngs(0))
    _randomize(m)
    e = eqx.nn.MultiheadAttention(
        heads,
        d_in,
        output_size=d_out,
        qk_size=qk // heads,
        vo_size=qk // heads,
        use_query_bias=True,
        use_key_bias=True,
        use_value_bias=True,
        use_output_bias=True,
        key=KEYS[0],
    )
    # Equinox: Linear weights are (out, in) with heads flattened into `out`.
    lin = lambda k: k.reshape(d_in, -1).T  # noqa: E731
    e = eqx.tree_at(
        lambda e: (
            e.query_proj.weight,
            e.query_proj.bias,
            e.key_proj.weight,
            e.key_proj.bias,
            e.value_proj.weight,
            e.value_proj.bias,
            e.output_proj.weight,
            e.output_proj.bias,
        ),
        e,
        (
            lin(m.query.kernel[...]),
            m.query.bias[...].ravel(),
            lin(m.key.kernel[...]),
            m.key.bias[...].ravel(),
            lin(m.value.kernel[...]),
            m.value.bias[...].ravel(),
            m.out.kernel[...].reshape(qk, d_out).T,
            m.out.bias[...],
        ),
    )
    xq = jax.random.normal(KEYS[1], (3, 5, d_in))
    xkv = jax.random.normal(KEYS[2], (3, 7, d_in))
    mask = jax.random.bernoulli(KEYS[3], 0.7, (3, 5, 7)).at[..., 0].set(True)
    ours = m(xq, xkv, mask=mask[:, None])
    theirs = jax.vmap(lambda q, kv, mk: e(q, kv, kv, mask=mk))(xq, xkv, mask)
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=1e-5)


def test_cross_attention_gqa_matches_einsum_reference():
    m = MultiHeadAttention(4, 6, qkv_features=8, num_kv_heads=2, in_kv_features=3, rngs=Rngs(1))
    _randomize(m, 1)
    xq = jax.random.normal(KEYS[1], (2, 5, 6))
    xk = jax.random.normal(KEYS[2], (2, 7, 3))
    np.testing.assert_allclose(m(xq, xk), _reference(m, xq, xk), atol=1e-5, rtol=1e-5)
    # inputs_v defaults to inputs_k, inputs_k to inputs_q
    np.testing.assert_allclose(m(xq, xk, xk), m(xq, xk), atol=1e-6)


def test_self_attention_with_normalize_qk_matches_reference():
    m = MultiHeadAttention(2, 8, normalize_qk=True, rngs=Rngs(2))
    _randomize(m, 2)

    def ln(x, scale):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / jnp.sqrt(var + 1e-6) * scale

    x = jax.random.normal(KEYS[4], (2, 4, 8))
    np.testing.assert_allclose(m(x), _reference(m, x, x, ln=ln), atol=1e-4, rtol=1e-4)


def test_is_causal_equals_causal_mask():
    m = MultiHeadAttention(2, 8, rngs=Rngs(0))
    x = jax.random.normal(KEYS[5], (2, 5, 8))
    mask = make_causal_mask(jnp.ones((2, 5)))
    np.testing.assert_allclose(m(x, is_causal=True), m(x, mask=mask), atol=1e-6)
    np.testing.assert_allclose(m(x, mask=mask), _reference(m, x, x, mask=mask), atol=1e-5)


@pytest.mark.parametrize("num_kv_heads", [None, 1])
def test_decode_token_by_token_equals_full_causal_attention(num_kv_heads):
    m = MultiHeadAttention(2, 8, num_kv_heads=num_kv_heads, rngs=Rngs(3))
    _randomize(m, 3)
    x = jax.random.normal(KEYS[6], (3, 6, 8))
    full = m(x, mask=make_causal_mask(jnp.ones((3, 6))))
    m.init_cache(x.shape)
    kv_heads = num_kv_heads or 2
    assert isinstance(m.cached_key, Cache) and m.cached_key.shape == (3, 6, kv_heads, 4)
    assert m.cache_index[...].dtype == jnp.int32
    steps = []
    for t in range(6):
        steps.append(m(x[:, t : t + 1], decode=True))
        assert int(m.cache_index[...]) == t + 1
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=1e-5, rtol=1e-5)
    # the cache holds every step's projected key
    keys = jnp.einsum("...i,ihd->...hd", x, m.key.kernel[...]) + m.key.bias[...]
    np.testing.assert_allclose(m.cached_key[...], keys, atol=1e-5)


def test_decode_attribute_and_jit_through_split_merge():
    m = MultiHeadAttention(2, 8, rngs=Rngs(3))
    x = jax.random.normal(KEYS[6], (1, 3, 8))
    full = m(x, is_causal=True)
    m.init_cache(x.shape)
    m.set_attributes(decode=True)
    graphdef, params, cache = core.split(m, Param, Cache)

    @jax.jit
    def step(params, cache, x_t):
        layer = core.merge(graphdef, params, cache)
        y = layer(x_t)
        return y, core.state(layer, Cache)

    outs = []
    for t in range(3):
        y, cache = step(params, cache, x[:, t : t + 1])
        outs.append(y)
    np.testing.assert_allclose(jnp.concatenate(outs, 1), full, atol=1e-5)
    assert int(cache["cache_index"][...]) == 3


def test_decode_with_user_mask_combines_masks():
    m = MultiHeadAttention(2, 8, rngs=Rngs(4))
    x = jax.random.normal(KEYS[7], (1, 4, 8))
    keep = jnp.array([True, False, True, True])
    full_mask = make_causal_mask(jnp.ones((1, 4))) * keep[None, None, None, :]
    full = m(x, mask=full_mask)
    m.init_cache(x.shape)
    steps = [m(x[:, t : t + 1], decode=True, mask=jnp.broadcast_to(keep, (1, 1, 1, 4))) for t in range(4)]
    np.testing.assert_allclose(jnp.concatenate(steps, 1)[:, 2:], full[:, 2:], atol=1e-5)


def test_sow_weights_records_attention_weights():
    m = MultiHeadAttention(2, 8, rngs=Rngs(0))
    m(jnp.ones((3, 5, 8)), sow_weights=True)
    (weights,) = m.attention_weights[...]
    assert isinstance(m.attention_weights, Intermediate)
    assert weights.shape == (3, 2, 5, 5)
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-6)


def test_dropout_modes_and_rngs():
    m = MultiHeadAttention(2, 8, dropout_rate=0.5, rngs=Rngs(0))
    x = jax.random.normal(KEYS[1], (2, 5, 8))
    with pytest.raises(ValueError, match="MultiHeadAttention: dropout_rate=0.5 > 0.*deterministic"):
        m(x)
    clean = m(x, deterministic=True)
    count = int(m.rngs.count[...])
    noisy1, noisy2 = m(x, deterministic=False), m(x, deterministic=False)
    assert int(m.rngs.count[...]) == count + 2
    assert not np.allclose(noisy1, clean) and not np.allclose(noisy1, noisy2)
    m.eval()
    np.testing.assert_allclose(m(x), clean)
    m.train()
    assert not np.allclose(m(x), clean)
    # an explicit rngs argument is used instead of the layer's own stream
    a = m(x, rngs=Rngs(dropout=7))
    b = m(x, rngs=Rngs(dropout=7))
    np.testing.assert_allclose(a, b)


def test_dropout_without_rngs_raises():
    m = MultiHeadAttention(2, 8, dropout_rate=0.5, keep_rngs=False, deterministic=False, rngs=Rngs(0))
    with pytest.raises(ValueError, match="MultiHeadAttention: dropout is active.*rngs"):
        m(jnp.ones((1, 3, 8)))


def test_errors_name_layer_and_shape():
    m = MultiHeadAttention(2, 8, in_kv_features=4, rngs=Rngs(0))
    with pytest.raises(ValueError, match=r"`inputs_q` of shape \(\.\.\., length, 8\).*got shape \(2, 5, 7\)"):
        m(jnp.ones((2, 5, 7)), jnp.ones((2, 5, 4)))
    with pytest.raises(ValueError, match=r"`inputs_k` of shape \(\.\.\., length, 4\) \(in_kv_features=4\)"):
        m(jnp.ones((2, 5, 8)))
    with pytest.raises(ValueError, match="`inputs_k` cannot be None when `inputs_v` is given"):
        m(jnp.ones((2, 5, 8)), inputs_v=jnp.ones((2, 5, 4)))
    with pytest.raises(ValueError, match=r"qkv_features \(7\) must be divisible by num_heads \(2\)"):
        MultiHeadAttention(2, 8, qkv_features=7, rngs=Rngs(0))
    with pytest.raises(ValueError, match=r"num_heads \(4\) must be a multiple of num_kv_heads \(3\)"):
        MultiHeadAttention(4, 8, qkv_features=12, num_kv_heads=3, rngs=Rngs(0))


def test_decode_errors():
    m = MultiHeadAttention(2, 8, rngs=Rngs(0))
    with pytest.raises(ValueError, match="decode=True needs an autoregressive cache.*init_cache"):
        m(jnp.ones((2, 1, 8)), decode=True)
    m.init_cache((2, 5, 8))
    with pytest.raises(ValueError, match=r"one token per call.*\(2, 1, 2, 4\).*got \(2, 5, 2, 4\)"):
        m(jnp.ones((2, 5, 8)), decode=True)
    with pytest.raises(ValueError, match=r"init_cache: `input_shape` must be"):
        m.init_cache((8,))
    with pytest.raises(ValueError, match="with decode=True `mask` must have rank 4"):
        m(jnp.ones((2, 1, 8)), decode=True, mask=jnp.ones((1, 5)))
    assert int(m.cache_index[...]) == 0  # a rejected step leaves the cache alone


def test_docstring_examples_run():
    import doctest

    from nnxfn.nn import attention as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_qkv_and_out_sharding_reach_the_projections():
    # One device: the layouts are the given specs and the numbers do not change
    # (the 8-device version is in tests/spmd/spmd_checks.py).
    from jax.sharding import AxisType, PartitionSpec as P

    m = MultiHeadAttention(4, 8, qkv_features=8, num_kv_heads=2, rngs=Rngs(0), decode=False)
    x = jax.random.normal(jax.random.key(0), (2, 3, 8))
    ref = m(x)
    mesh = jax.make_mesh((1, 1), ("b", "t"), axis_types=(AxisType.Explicit,) * 2)
    with jax.set_mesh(mesh):
        y = m(x, qkv_sharding=P("b", None, "t", None), out_sharding=P("b", None, "t"))
        assert jax.typeof(y).sharding.spec == P("b", None, "t")
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-6)
