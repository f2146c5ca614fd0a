"""`nnx.cond`, `switch`, `while_loop`, `fori_loop` with module operands."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxfn as nnx
from tx_models import Boom, Counter, Dropoutish, assert_unchanged, key_data, snapshot


def bump(m, x):
    m.count[...] = m.count[...] + 1
    return x * m.w


def accumulate(m, x):
    m.total[...] = m.total[...] + x
    return -x


# -- cond ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pred", [True, False])
def test_cond_writes_in_either_branch_committed(pred):
    m = Counter()
    x = jnp.array([1.0, 2.0, 3.0])
    out = nnx.cond(pred, bump, accumulate, m, x)
    want = jax.lax.cond(pred, lambda x: x * jnp.arange(1.0, 4.0), lambda x: -x, x)
    np.testing.assert_allclose(out, want)
    assert int(m.count[...]) == (1 if pred else 0)
    np.testing.assert_allclose(m.total[...], jnp.zeros(3) if pred else x)


def test_cond_traced_predicate_under_jit():
    m = Counter()

    @nnx.jit
    def f(m, x):
        return nnx.cond(x.sum() > 0, bump, accumulate, m, x)

    np.testing.assert_allclose(f(m, jnp.ones(3)), [1.0, 2.0, 3.0])
    np.testing.assert_allclose(f(m, -jnp.ones(3)), jnp.ones(3))
    assert int(m.count[...]) == 1
    np.testing.assert_allclose(m.total[...], -jnp.ones(3))


def test_cond_modules_in_pytree_operands_and_shared():
    class Holder(nnx.Module):
        def __init__(self, sub):
            self.sub = sub

    shared = Counter()
    ops = {"a": Holder(shared), "b": [Holder(shared)]}

    def t(ops, x):
        assert ops["a"].sub is ops["b"][0].sub
        bump(ops["a"].sub, x)
        return bump(ops["b"][0].sub, x)

    out = nnx.cond(True, t, lambda ops, x: x, ops, jnp.ones(3))
    np.testing.assert_allclose(out, [1.0, 2.0, 3.0])
    assert int(shared.count[...]) == 2
    assert ops["a"].sub is ops["b"][0].sub is shared


def test_cond_rngs_operand():
    rngs = nnx.Rngs(0)
    k = nnx.cond(True, lambda r: r(), lambda r: jax.random.key(1), rngs)
    np.testing.assert_array_equal(key_data(k), key_data(jax.random.fold_in(jax.random.key(0), 0)))
    assert int(rngs.default.count[...]) == 1
    nnx.cond(False, lambda r: r(), lambda r: jax.random.key(1), rngs)
    assert int(rngs.default.count[...]) == 1


def test_cond_structure_change_raises():
    m = Counter()
    before = snapshot(m)

    def t(m):
        m.extra = nnx.Param(jnp.ones(1))

    with pytest.raises(ValueError, match="nnx.cond: a branch changed the structure"):
        nnx.cond(True, t, lambda m: None, m)
    assert_unchanged(before, m)


def test_cond_returning_module_raises():
    with pytest.raises(ValueError, match="returned a Module"):
        nnx.cond(True, lambda: Counter(), lambda: Counter())


def test_cond_exception_leaves_unchanged():
    m = Counter()
    before = snapshot(m)

    def t(m, x):
        bump(m, x)
        raise Boom()

    with pytest.raises(Boom):
        nnx.cond(True, t, accumulate, m, jnp.ones(3))
    assert_unchanged(before, m)


def test_cond_captured_write_raises():
    m = Counter()
    with pytest.raises(RuntimeError, match="nnx.cond.*Pass it as an argument"):
        nnx.cond(True, lambda x: bump(m, x), lambda x: x, jnp.ones(3))
    assert int(m.count[...]) == 0


# -- switch -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("index", [0, 1, 2])
def test_switch_branches_write(index):
    m = Counter()
    x = jnp.array([1.0, 2.0, 3.0])

    def third(m, x):
        m.w[...] = m.w[...] * 10
        return x

    out = nnx.switch(index, [bump, accumulate, third], m, x)
    want = [x * jnp.arange(1.0, 4.0), -x, x][index]
    np.testing.assert_allclose(out, want)
    assert int(m.count[...]) == (index == 0)
    np.testing.assert_allclose(m.total[...], x if index == 1 else jnp.zeros(3))
    np.testing.assert_allclose(m.w[...], jnp.arange(1.0, 4.0) * (10 if index == 2 else 1))


def test_switch_under_jit_traced_index():
    m = Counter()
    f = nnx.jit(lambda m, i, x: nnx.switch(i, [bump, accumulate], m, x))
    f(m, jnp.array(0), jnp.ones(3))
    f(m, jnp.array(1), jnp.ones(3))
    f(m, jnp.array(0), jnp.ones(3))
    assert int(m.count[...]) == 2
    np.testing.assert_allclose(m.total[...], jnp.ones(3))


# -- while_loop / fori_loop ---------------------------------------------------------------------------
def test_while_loop_module_in_carry():
    m = Counter()

    def cond(c):
        m, x = c
        return m.count[...] < 4

    def body(c):
        m, x = c
        return m, m(x)

    out_m, x = nnx.while_loop(cond, body, (m, jnp.ones(3)))
    assert out_m is m
    assert int(m.count[...]) == 4
    w = jnp.arange(1.0, 4.0)
    np.testing.assert_allclose(x, w**4)
    np.testing.assert_allclose(m.total[...], 1 + w + w**2 + w**3)


def test_while_loop_plain_matches_lax():
    got = nnx.while_loop(lambda c: c[0] < 10, lambda c: (c[0] + 1, c[1] * 1.5), (0, jnp.ones(2)))
    want = jax.lax.while_loop(lambda c: c[0] < 10, lambda c: (c[0] + 1, c[1] * 1.5), (0, jnp.ones(2)))
    assert int(got[0]) == int(want[0])
    np.testing.assert_allclose(got[1], want[1])


def test_fori_loop_module_matches_python_loop():
    m, ref = Counter(), Counter()

    def body(i, c):
        m, x = c
        return m, m(x + i)

    out_m, x = nnx.fori_loop(0, 3, body, (m, jnp.ones(3)))
    rx = jnp.ones(3)
    for i in range(3):
        rx = ref(rx + i)
    assert out_m is m
    np.testing.assert_allclose(x, rx)
    assert int(m.count[...]) == 3
    np.testing.assert_allclose(m.total[...], ref.total[...])


def test_fori_loop_module_alone_and_rngs():
    m = Dropoutish(0.5, rngs=nnx.Rngs(dropout=0))

    def body(i, m):
        m(jnp.ones(4))
        return m

    out = nnx.fori_loop(0, 5, body, m)
    assert out is m
    assert int(m.rngs.dropout.count[...]) == 5


def test_fori_loop_under_jit_and_unroll():
    m = Counter()
    f = nnx.jit(
        lambda m, n: nnx.fori_loop(0, n, lambda i, m: (m(jnp.ones(3)), m)[1], m, unroll=2), static_argnums=1
    )
    f(m, 4)
    assert int(m.count[...]) == 4


def test_while_loop_structure_mismatch_raises():
    m = Counter()
    before = snapshot(m)
    with pytest.raises(ValueError, match="same structure as its input"):
        nnx.while_loop(lambda c: c[1] < 2, lambda c: (nnx.Rngs(0), c[1] + 1), (m, 0))
    assert_unchanged(before, m)

    def body(c):
        c[0].extra = nnx.Param(jnp.ones(1))
        return c

    with pytest.raises(ValueError, match="same structure as its input"):
        nnx.while_loop(lambda c: c[1] < 2, body, (m, 0))
    assert_unchanged(before, m)


def test_loop_exception_leaves_unchanged():
    m = Counter()
    before = snapshot(m)

    def body(i, m):
        m(jnp.ones(3))
        raise Boom()

    with pytest.raises(Boom):
        nnx.fori_loop(0, 3, body, m)
    assert_unchanged(before, m)


def test_while_loop_captured_write_raises():
    m = Counter()
    with pytest.raises(RuntimeError, match="nnx.while_loop.*Pass it as an argument"):
        nnx.while_loop(lambda i: i < 3, lambda i: (bump(m, 1.0), i + 1)[1], 0)
    assert int(m.count[...]) == 0


def test_grad_through_fori_loop():
    m = Counter()

    def loss(m):
        _, x = nnx.fori_loop(0, 3, lambda i, c: (c[0], c[0](c[1])), (m, jnp.ones(3)))
        return x.sum()

    g = nnx.grad(loss)(m)
    w = jnp.arange(1.0, 4.0)
    np.testing.assert_allclose(g["w"][...], 3 * w**2)
    assert int(m.count[...]) == 3
