"""Value tests for nnxfn.nn.pooling against a numpy reference implementation."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from nnxfn.nn import pooling

Pad = str | Sequence[tuple[int, int]]


def _pads(
    spatial: Sequence[int], window: Sequence[int], strides: Sequence[int], padding: Pad
) -> list[tuple[int, int]]:
    """(low, high) pads per spatial dim, with XLA's SAME rule (extra pad high)."""
    if padding == "VALID":
        return [(0, 0)] * len(spatial)
    if padding == "SAME":
        out = []
        for n, w, s in zip(spatial, window, strides):
            total = max((math.ceil(n / s) - 1) * s + w - n, 0)
            out.append((total // 2, total - total // 2))
        return out
    return [tuple(p) for p in padding]


def ref_pool(
    x: np.ndarray,
    window: Sequence[int],
    strides: Sequence[int] | None,
    padding: Pad,
    op: str,
    count_include_pad: bool = True,
) -> np.ndarray:
    """Reference pooling over (batch..., spatial..., C) with explicit loops."""
    nsp = len(window)
    strides = tuple(strides) if strides is not None else (1,) * nsp
    spatial = x.shape[-nsp - 1 : -1]
    lead = x.shape[: -nsp - 1]
    pads = _pads(spatial, window, strides, padding)
    fill = {"max": -np.inf, "min": np.inf, "avg": 0.0}[op]
    width = [(0, 0)] * len(lead) + list(pads) + [(0, 0)]
    xp = np.pad(x.astype(np.float64), width, constant_values=fill)
    valid = np.pad(np.ones(spatial), pads, constant_values=0.0)
    out_sp = [(n + lo + hi - w) // s + 1 for n, (lo, hi), w, s in zip(spatial, pads, window, strides)]
    out = np.zeros(lead + tuple(out_sp) + (x.shape[-1],))
    for idx in itertools.product(*[range(o) for o in out_sp]):
        sl = tuple(slice(i * s, i * s + w) for i, s, w in zip(idx, strides, window))
        win = xp[(Ellipsis,) + sl + (slice(None),)]
        axes = tuple(range(len(lead), len(lead) + nsp))
        if op == "max":
            r = win.max(axis=axes)
        elif op == "min":
            r = win.min(axis=axes)
        else:
            denom = math.prod(window) if count_include_pad else valid[sl].sum()
            with np.errstate(invalid="ignore"):  # all-padding window -> nan, like XLA
                r = win.sum(axis=axes) / denom
        out[(Ellipsis,) + idx + (slice(None),)] = r
    return out


RNG = np.random.default_rng(0)
X2D = RNG.normal(size=(2, 7, 6, 3)).astype(np.float32)
X1D = RNG.normal(size=(3, 9, 2)).astype(np.float32)
FNS = {"max": pooling.max_pool, "min": pooling.min_pool, "avg": pooling.avg_pool}


@pytest.mark.parametrize("op", ["max", "min", "avg"])
@pytest.mark.parametrize("window", [(1, 1), (2, 2), (3, 2), (7, 1)])
@pytest.mark.parametrize("strides", [None, (1, 1), (2, 2), (3, 1)])
@pytest.mark.parametrize("padding", ["VALID", "SAME", ((1, 1), (0, 2)), ((2, 0), (1, 1))])
def test_pool_2d_sweep(
    op: str, window: tuple[int, int], strides: tuple[int, int] | None, padding: Pad
) -> None:
    """2-D pooling matches the reference across windows/strides/paddings."""
    got = FNS[op](X2D, window, strides, padding)
    ref = ref_pool(X2D, window, strides, padding, op)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op", ["max", "min", "avg"])
@pytest.mark.parametrize(("window", "strides"), [((1,), (1,)), ((2,), (2,)), ((4,), (3,)), ((9,), None)])
@pytest.mark.parametrize("padding", ["VALID", "SAME", ((3, 1),)])
def test_pool_1d_sweep(op: str, window: tuple[int], strides: tuple[int] | None, padding: Pad) -> None:
    """1-D pooling matches the reference."""
    got = FNS[op](X1D, window, strides, padding)
    np.testing.assert_allclose(got, ref_pool(X1D, window, strides, padding, op), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("window", [(2, 2), (3, 3), (3, 2)])
@pytest.mark.parametrize("strides", [(1, 1), (2, 2), (2, 3)])
@pytest.mark.parametrize("padding", ["SAME", "VALID", ((1, 2), (2, 1)), ((2, 2), (0, 0))])
def test_avg_pool_count_include_pad_false(
    window: tuple[int, int], strides: tuple[int, int], padding: Pad
) -> None:
    """count_include_pad=False divides by the number of real (non-pad) elements."""
    got = pooling.avg_pool(X2D, window, strides, padding, count_include_pad=False)
    ref = ref_pool(X2D, window, strides, padding, "avg", count_include_pad=False)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_avg_pool_pad_counting_on_ones() -> None:
    """Average of ones with SAME padding: 1 without pads counted, <1 at borders with."""
    ones = np.ones((1, 4, 4, 1), np.float32)
    excl = pooling.avg_pool(ones, (3, 3), padding="SAME", count_include_pad=False)
    incl = pooling.avg_pool(ones, (3, 3), padding="SAME")
    np.testing.assert_allclose(excl, np.ones_like(ones))
    assert float(incl[0, 0, 0, 0]) == pytest.approx(4 / 9)
    assert float(incl[0, 1, 1, 0]) == pytest.approx(1.0)


@pytest.mark.parametrize("op", ["max", "avg"])
def test_unbatched_input(op: str) -> None:
    """An input without batch dim is pooled as a batch of one and squeezed."""
    got = FNS[op](X2D[0], (2, 3), (1, 2), "SAME")
    full = FNS[op](X2D, (2, 3), (1, 2), "SAME")
    assert got.shape == full.shape[1:]
    np.testing.assert_allclose(got, full[0], rtol=1e-6)
    excl = pooling.avg_pool(X2D[1], (3, 3), (2, 2), ((1, 1), (2, 0)), count_include_pad=False)
    ref = ref_pool(X2D[1:2], (3, 3), (2, 2), ((1, 1), (2, 0)), "avg", count_include_pad=False)[0]
    np.testing.assert_allclose(excl, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("padding", ["SAME", ((1, 0), (0, 1))])
def test_multiple_batch_dims(padding: Pad) -> None:
    """Several leading batch dims are all treated as batch."""
    x = RNG.normal(size=(2, 3, 5, 4, 2)).astype(np.float32)
    for op in ("max", "avg"):
        got = FNS[op](x, (2, 2), (2, 1), padding)
        np.testing.assert_allclose(got, ref_pool(x, (2, 2), (2, 1), padding, op), rtol=1e-5, atol=1e-6)
    got = pooling.avg_pool(x, (2, 2), (2, 1), padding, count_include_pad=False)
    ref = ref_pool(x, (2, 2), (2, 1), padding, "avg", count_include_pad=False)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_generic_pool_sum_and_product() -> None:
    """pool() with a custom reduction equals the reference sum."""
    got = pooling.pool(X2D, 0.0, lax.add, (2, 2), (1, 1), "VALID")
    ref = ref_pool(X2D, (2, 2), (1, 1), "VALID", "avg") * 4
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    pos = np.abs(X1D) + 0.5
    prod = pooling.pool(pos, 1.0, lax.mul, (3,), (3,), "VALID")
    np.testing.assert_allclose(prod, pos.reshape(3, 3, 3, 2).prod(axis=2), rtol=1e-5)


def test_integer_and_bool_inputs() -> None:
    """max/min pool work on integer inputs with negative values and booleans."""
    x = -np.arange(2 * 6 * 1).reshape(2, 6, 1).astype(np.int32)
    got = pooling.max_pool(x, (2,), (2,), "SAME")
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(got, ref_pool(x, (2,), (2,), "SAME", "max").astype(np.int32))
    np.testing.assert_array_equal(
        pooling.min_pool(-x, (3,), None, "SAME"), ref_pool(-x, (3,), None, "SAME", "min")
    )
    b = np.array([[[True], [False], [False], [True]]])
    np.testing.assert_array_equal(pooling.max_pool(b, (2,))[0, :, 0], [True, False, True])
    np.testing.assert_array_equal(pooling.min_pool(b, (2,))[0, :, 0], [False, False, False])


def test_jit_and_grad() -> None:
    """Pooling jits and avg_pool's gradient spreads 1/prod(window) per window."""
    f = jax.jit(lambda x: pooling.avg_pool(x, (2, 2), (2, 2)))
    np.testing.assert_allclose(f(X2D), ref_pool(X2D, (2, 2), (2, 2), "VALID", "avg"), rtol=1e-5, atol=1e-6)
    g = jax.grad(lambda x: pooling.avg_pool(x, (2, 2), (2, 2)).sum())(jnp.ones((1, 4, 4, 1)))
    np.testing.assert_allclose(g, np.full((1, 4, 4, 1), 0.25))
    assert pooling.max_pool(jnp.asarray(X2D, jnp.bfloat16), (2, 2)).dtype == jnp.bfloat16


@pytest.mark.parametrize("fn", [pooling.max_pool, pooling.min_pool, pooling.avg_pool])
def test_window_longer_than_rank_raises(fn) -> None:
    """A window with too many dims for the input rank is rejected."""
    with pytest.raises(ValueError, match=r"_pool: `inputs` of shape \(4, 3\).*rank >= 3"):
        fn(np.ones((4, 3)), (2, 2))


def test_pool_errors() -> None:
    """Bad strides, padding and window arguments raise ValueError naming the arg."""
    x = np.ones((1, 5, 5, 1), np.float32)
    with pytest.raises(ValueError, match=r"max_pool: `strides` must have one entry.*\(1,\)"):
        pooling.max_pool(x, (2, 2), strides=(1,))
    with pytest.raises(ValueError, match=r"avg_pool: `padding` must be 'SAME', 'VALID'.*'FULL'"):
        pooling.avg_pool(x, (2, 2), padding="FULL")
    with pytest.raises(ValueError, match=r"min_pool: `padding` must hold one \(low, high\) pair"):
        pooling.min_pool(x, (2, 2), padding=((1, 1),))
    with pytest.raises(ValueError, match=r"min_pool: `padding` must hold one \(low, high\) pair"):
        pooling.min_pool(x, (2, 2), padding=((1, 1, 1), (0, 0)))
    with pytest.raises(ValueError, match=r"pool: `window_shape` must be a sequence of ints.*\(2,\)"):
        pooling.pool(x, 0.0, lax.add, 2, None, "VALID")
    with pytest.raises(ValueError, match=r"max_pool: `window_shape` and `strides` entries must be >= 1"):
        pooling.max_pool(x, (0, 2))
