"""Recurrent cells against Equinox and hand formulas; RNN against a Python loop."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnxfn import core
from nnxfn.facade.module import Module
from nnxfn.facade.rngs import Rngs
from nnxfn.facade.variables import BatchStat, Param
from nnxfn.nn import initializers
from nnxfn.nn.recurrent import (
    RNN,
    Bidirectional,
    GRUCell,
    LSTMCell,
    OptimizedLSTMCell,
    SimpleCell,
    flip_sequences,
)

KEYS = jax.random.split(jax.random.key(7), 8)
sig, tanh = jax.nn.sigmoid, jnp.tanh


def _randomize(model: Module, seed: int = 0) -> None:
    params = core.state(model, Param)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    core.update(
        model,
        jax.tree.unflatten(treedef, [0.5 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]),
    )


def _shapes(model: Module) -> dict:
    return {".".join(p): v.shape for p, v in core.state(model).flat_state()}


def test_parameter_names_and_shapes():
    assert _shapes(LSTMCell(3, 4, rngs=Rngs(0))) == {
        **{f"{n}.kernel": (3, 4) for n in ("ii", "if_", "ig", "io")},
        **{f"{n}.kernel": (4, 4) for n in ("hi", "hf", "hg", "ho")},
        **{f"{n}.bias": (4,) for n in ("hi", "hf", "hg", "ho")},
    }
    assert _shapes(OptimizedLSTMCell(3, 4, rngs=Rngs(0))) == {
        "dense_i.kernel": (3, 16),
        "dense_h.kernel": (4, 16),
        "dense_h.bias": (16,),
    }
    assert _shapes(GRUCell(3, 4, rngs=Rngs(0))) == {
        "dense_i.kernel": (3, 12),
        "dense_i.bias": (12,),
        "dense_h.kernel": (4, 12),
    }
    assert _shapes(SimpleCell(3, 4, rngs=Rngs(0))) == {
        "dense_i.kernel": (3, 4),
        "dense_i.bias": (4,),
        "dense_h.kernel": (4, 4),
    }
    cell = GRUCell(3, 4, rngs=Rngs(0))
    assert cell.num_feature_axes == 1 and cell.rngs is None


def test_recurrent_kernels_are_orthogonal_per_gate():
    cell = OptimizedLSTMCell(3, 4, rngs=Rngs(0))
    for w in jnp.split(cell.dense_h.kernel[...], 4, axis=-1):
        np.testing.assert_allclose(w.T @ w, jnp.eye(4), atol=1e-5)
    w = LSTMCell(3, 4, rngs=Rngs(0)).hf.kernel[...]
    np.testing.assert_allclose(w.T @ w, jnp.eye(4), atol=1e-5)


def test_lstm_cell_matches_equinox():
    cell = LSTMCell(3, 4, rngs=Rngs(0))
    _randomize(cell)
    e = eqx.nn.LSTMCell(3, 4, key=KEYS[0])
    w_ih = jnp.concatenate([getattr(cell, n).kernel[...] for n in ("ii", "if_", "ig", "io")], -1).T
    w_hh = jnp.concatenate([getattr(cell, n).kernel[...] for n in ("hi", "hf", "hg", "ho")], -1).T
    b = jnp.concatenate([getattr(cell, n).bias[...] for n in ("hi", "hf", "hg", "ho")])
    e = eqx.tree_at(lambda e: (e.weight_ih, e.weight_hh, e.bias), e, (w_ih, w_hh, b))
    x = jax.random.normal(KEYS[1], (5, 3))
    c, h = jax.random.normal(KEYS[2], (5, 4)), jax.random.normal(KEYS[3], (5, 4))
    (c2, h2), y = cell((c, h), x)
    eh, ec = jax.vmap(lambda x, h, c: e(x, (h, c)))(x, h, c)
    np.testing.assert_allclose(h2, eh, atol=1e-5)
    np.testing.assert_allclose(c2, ec, atol=1e-5)
    np.testing.assert_allclose(y, h2)

    # OptimizedLSTMCell with the same weights fused gives the same numbers
    opt = OptimizedLSTMCell(3, 4, rngs=Rngs(1))
    opt.dense_i.kernel[...] = w_ih.T
    opt.dense_h.kernel[...] = w_hh.T
    opt.dense_h.bias[...] = b
    (c3, h3), _ = opt((c, h), x)
    np.testing.assert_allclose(h3, h2, atol=1e-5)
    np.testing.assert_allclose(c3, c2, atol=1e-5)


def test_gru_cell_matches_equinox():
    cell = GRUCell(3, 4, rngs=Rngs(0))
    _randomize(cell, 1)
    e = eqx.nn.GRUCell(3, 4, key=KEYS[0])
    e = eqx.tree_at(
        lambda e: (e.weight_ih, e.weight_hh, e.bias, e.bias_n),
        e,
        (cell.dense_i.kernel[...].T, cell.dense_h.kernel[...].T, cell.dense_i.bias[...], jnp.zeros(4)),
    )
    x, h = jax.random.normal(KEYS[1], (5, 3)), jax.random.normal(KEYS[2], (5, 4))
    h2, y = cell(h, x)
    np.testing.assert_allclose(h2, jax.vmap(e)(x, h), atol=1e-5)
    np.testing.assert_allclose(y, h2)


@pytest.mark.parametrize("residual", [False, True])
def test_simple_cell_formula(residual):
    cell = SimpleCell(3, 4, residual=residual, rngs=Rngs(0))
    _randomize(cell, 2)
    x, h = jax.random.normal(KEYS[1], (5, 3)), jax.random.normal(KEYS[2], (5, 4))
    pre = x @ cell.dense_i.kernel[...] + cell.dense_i.bias[...] + h @ cell.dense_h.kernel[...]
    ref = tanh(pre + h) if residual else tanh(pre)
    h2, y = cell(h, x)
    np.testing.assert_allclose(h2, ref, atol=1e-5)


def test_initialize_carry():
    lstm = LSTMCell(3, 4, rngs=Rngs(0))
    c, h = lstm.initialize_carry((5, 2, 3))
    assert c.shape == h.shape == (5, 2, 4) and not c.any()
    gru = GRUCell(3, 4, carry_init=initializers.normal(1.0), rngs=Rngs(0))
    with pytest.raises(ValueError, match="GRUCell.initialize_carry: this carry_init is random"):
        gru.initialize_carry((2, 3))
    rngs = Rngs(0, carry=5)
    carry = gru.initialize_carry((2, 3), rngs=rngs)
    assert carry.shape == (2, 4) and carry.std() > 0.1
    assert int(rngs.carry.count[...]) == 1
    kept = GRUCell(3, 4, carry_init=initializers.normal(1.0), keep_rngs=True, rngs=Rngs(0))
    a, b = kept.initialize_carry((2, 3)), kept.initialize_carry((2, 3))
    assert not np.allclose(a, b)
    z = gru.initialize_carry((2, 3), carry_init=initializers.zeros)
    assert not z.any()


def _loop(cell, carry, xs):
    """Reference: a Python loop over axis 1 of `xs`."""
    ys = []
    for t in range(xs.shape[1]):
        carry, y = cell(carry, xs[:, t])
        ys.append(y)
    return carry, jnp.stack(ys, axis=1)


@pytest.mark.parametrize("cell_type", [LSTMCell, OptimizedLSTMCell, GRUCell, SimpleCell])
def test_rnn_equals_python_loop(cell_type):
    cell = cell_type(3, 4, rngs=Rngs(0))
    _randomize(cell, 3)
    xs = jax.random.normal(KEYS[4], (2, 6, 3))
    carry0 = cell.initialize_carry((2, 3))
    ref_carry, ref_ys = _loop(cell, carry0, xs)
    carry, ys = RNN(cell, return_carry=True)(xs)
    np.testing.assert_allclose(ys, ref_ys, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), carry, ref_carry)
    # time-major layout and unrolling give the same numbers
    ys_tm = RNN(cell, time_major=True, unroll=3)(jnp.swapaxes(xs, 0, 1))
    np.testing.assert_allclose(jnp.swapaxes(ys_tm, 0, 1), ref_ys, atol=1e-5)


def test_rnn_initial_carry_and_reverse():
    cell = GRUCell(3, 4, rngs=Rngs(0))
    _randomize(cell, 4)
    xs = jax.random.normal(KEYS[4], (2, 5, 3))
    h0 = jax.random.normal(KEYS[5], (2, 4))
    rnn = RNN(cell)
    np.testing.assert_allclose(rnn(xs, initial_carry=h0), _loop(cell, h0, xs)[1], atol=1e-5)
    ref_carry, ref_ys = _loop(cell, h0, xs[:, ::-1])
    carry, ys = rnn(xs, initial_carry=h0, reverse=True, return_carry=True)
    np.testing.assert_allclose(ys, ref_ys, atol=1e-5)
    np.testing.assert_allclose(carry, ref_carry, atol=1e-5)
    kept = rnn(xs, initial_carry=h0, reverse=True, keep_order=True)
    np.testing.assert_allclose(kept, ref_ys[:, ::-1], atol=1e-5)


class _Sum(Module):
    """A linear 'cell' (carry + x) that is easy to reason about."""

    in_features = hidden_features = 1
    num_feature_axes = 1

    def initialize_carry(self, input_shape, rngs=None):
        return jnp.zeros(input_shape[:-1] + (1,))

    def __call__(self, carry, x):
        carry = carry + x
        return carry, carry


def test_seq_lengths_select_carry_and_reverse_valid_steps():
    xs = jnp.broadcast_to(jnp.arange(1.0, 6.0)[None, :, None], (2, 5, 1))
    lengths = jnp.array([3, 5])
    rnn = RNN(_Sum(), return_carry=True)
    carry, ys = rnn(xs, seq_lengths=lengths)
    np.testing.assert_allclose(carry[:, 0], [6.0, 15.0])  # sum of the first L steps
    np.testing.assert_allclose(ys[0, :, 0], [1, 3, 6, 10, 15])  # outputs are not masked
    carry, ys = rnn(xs, seq_lengths=lengths, reverse=True)
    np.testing.assert_allclose(carry[:, 0], [6.0, 15.0])
    np.testing.assert_allclose(ys[0, :, 0], [3, 5, 6, 11, 15])  # 3,2,1 then padding 5,4
    np.testing.assert_allclose(ys[1, :, 0], [5, 9, 12, 14, 15])
    _, ys = rnn(xs, seq_lengths=lengths, reverse=True, keep_order=True)
    np.testing.assert_allclose(ys[0, :, 0], [6, 5, 3, 15, 11])


def test_flip_sequences():
    xs = jnp.arange(5.0)[:, None] * jnp.ones((1, 2))  # (time, batch)
    out = flip_sequences(xs, jnp.array([3, 5]))
    np.testing.assert_allclose(out[:, 0], [2, 1, 0, 4, 3])
    np.testing.assert_allclose(out[:, 1], [4, 3, 2, 1, 0])
    np.testing.assert_allclose(flip_sequences(out, jnp.array([3, 5])), xs)


class _Counting(Module):
    """A cell with per-step state: counts its calls in a BatchStat."""

    num_feature_axes = 1

    def __init__(self):
        self.calls = BatchStat(jnp.zeros((), jnp.int32))
        self.w = Param(jnp.ones(()))

    def initialize_carry(self, input_shape, rngs=None):
        return jnp.zeros(input_shape[:-1] + (1,))

    def __call__(self, carry, x):
        self.calls[...] = self.calls[...] + 1
        return carry + self.w * x, carry


class _BadCell(_Counting):
    def __call__(self, carry, x):
        self.w[...] = self.w[...] * 2
        return carry, carry


def test_cell_state_is_written_back_and_params_are_constants():
    cell = _Counting()
    RNN(cell)(jnp.ones((2, 7, 1)))
    assert int(cell.calls[...]) == 7
    with pytest.raises(RuntimeError, match="RNN: _BadCell changed a Param .*inside the time loop"):
        RNN(_BadCell())(jnp.ones((2, 3, 1)))


def test_dropout_inside_cell_draws_a_new_key_each_step():
    from nnxfn.nn.stochastic import Dropout

    class Noisy(Module):
        num_feature_axes = 1

        def __init__(self):
            self.drop = Dropout(0.5, rngs=Rngs(dropout=1))

        def initialize_carry(self, input_shape, rngs=None):
            return jnp.zeros(input_shape)

        def __call__(self, carry, x):
            y = self.drop(x)
            return carry + y, y

    cell = Noisy()
    ys = RNN(cell)(jnp.ones((1, 6, 64)))
    assert int(cell.drop.rngs.count[...]) == 6
    masks = np.asarray(ys[0] > 0)
    assert len({m.tobytes() for m in masks}) == 6  # a different mask at every step


def test_broadcast_rngs_share_one_mask_across_the_steps_of_a_call():
    from nnxfn.nn.stochastic import Dropout

    class Recurrent(Module):
        num_feature_axes = 1

        def __init__(self, rngs):
            self.drop = Dropout(0.5, rng_collection="recurrent", rngs=rngs)
            self.other = Dropout(0.5, rngs=rngs)

        def initialize_carry(self, input_shape, rngs=None):
            return jnp.zeros(input_shape)

        def __call__(self, carry, x):
            return carry, (self.drop(x), self.other(x))

    cell = Recurrent(Rngs(0, recurrent=1))
    rnn = RNN(cell, broadcast_rngs="recurrent")
    fixed, moving = rnn(jnp.ones((1, 6, 64)))
    masks = np.asarray(fixed[0] > 0)
    assert len({m.tobytes() for m in masks}) == 1  # the same mask at every step
    assert len({m.tobytes() for m in np.asarray(moving[0] > 0)}) == 6  # others still vary
    assert int(cell.drop.rngs.count[...]) == 1 and cell.drop.rngs.key.shape == ()
    assert int(cell.other.rngs.count[...]) == 6
    again, _ = rnn(jnp.ones((1, 6, 64)))
    assert not np.array_equal(np.asarray(again[0, 0] > 0), masks[0])  # a new mask per call
    assert int(cell.drop.rngs.count[...]) == 2
    # state_axes: None makes the selected state a loop constant; other axes are refused
    with pytest.raises(RuntimeError, match=r"changed a Param \(or state that state_axes maps"):
        RNN(_Counting(), state_axes={BatchStat: None})(jnp.ones((2, 7, 1)))
    with pytest.raises(NotImplementedError, match="state_axes maps .* to 0"):
        RNN(_Counting(), state_axes={BatchStat: 0})


def test_rnn_under_jit_and_grad():
    cell = LSTMCell(3, 4, rngs=Rngs(0))
    rnn = RNN(cell)
    graphdef, params = core.split(rnn, Param, ...)[:2]
    rest = core.state(rnn, lambda path, v: not isinstance(v, Param))
    xs = jax.random.normal(KEYS[6], (2, 4, 3))

    def loss(params):
        return core.merge(graphdef, params, rest)(xs).sum()

    grads = jax.jit(jax.grad(loss))(params)
    eps = 1e-3
    bumped = jax.tree.map(lambda p: p, params)
    bumped["cell"]["hi"]["bias"][...] = params["cell"]["hi"]["bias"][...].at[0].add(eps)
    numeric = (loss(bumped) - loss(params)) / eps
    np.testing.assert_allclose(grads["cell"]["hi"]["bias"][...][0], numeric, rtol=2e-2, atol=1e-3)


def test_bidirectional():
    fw, bw = GRUCell(3, 4, rngs=Rngs(0)), GRUCell(3, 4, rngs=Rngs(1))
    bi = Bidirectional(RNN(fw), RNN(bw), return_carry=True)
    xs = jax.random.normal(KEYS[7], (2, 5, 3))
    (c_fw, c_bw), ys = bi(xs)
    ref_fw_c, ref_fw = _loop(fw, fw.initialize_carry((2, 3)), xs)
    ref_bw_c, ref_bw = _loop(bw, bw.initialize_carry((2, 3)), xs[:, ::-1])
    np.testing.assert_allclose(ys, jnp.concatenate([ref_fw, ref_bw[:, ::-1]], -1), atol=1e-5)
    np.testing.assert_allclose(c_fw, ref_fw_c, atol=1e-5)
    np.testing.assert_allclose(c_bw, ref_bw_c, atol=1e-5)
    summed = Bidirectional(RNN(fw), RNN(bw), merge_fn=jnp.add)(xs)
    np.testing.assert_allclose(summed, ref_fw + ref_bw[:, ::-1], atol=1e-5)


def test_bidirectional_seq_lengths():
    bi = Bidirectional(RNN(_Sum()), RNN(_Sum()))
    xs = jnp.broadcast_to(jnp.arange(1.0, 6.0)[None, :, None], (1, 5, 1))
    ys = bi(xs, seq_lengths=jnp.array([3]))
    np.testing.assert_allclose(ys[0], [[1, 6], [3, 5], [6, 3], [10, 15], [15, 11]])


def test_errors_name_layer_and_shape():
    cell = LSTMCell(3, 4, rngs=Rngs(0))
    with pytest.raises(
        ValueError, match=r"LSTMCell: expected inputs of shape \(\.\.\., 3\).*got shape \(2, 5\)"
    ):
        cell(cell.initialize_carry((2, 3)), jnp.ones((2, 5)))
    with pytest.raises(ValueError, match=r"GRUCell: expected a carry of shape \(\.\.\., 4\)"):
        GRUCell(3, 4, rngs=Rngs(0))(jnp.ones((2, 5)), jnp.ones((2, 3)))
    with pytest.raises(ValueError, match=r"RNN: `seq_lengths` must have the batch shape \(2,\)"):
        RNN(cell)(jnp.ones((2, 5, 3)), seq_lengths=jnp.array([1, 2, 3]))
    with pytest.raises(ValueError, match="RNN: expected inputs of shape"):
        RNN(cell)(jnp.ones((3,)))
    with pytest.raises(TypeError, match="RNN: `cell` must be a recurrent cell Module"):
        RNN(lambda c, x: (c, x))
    with pytest.raises(TypeError, match="LSTMCell: `rngs` must be an nnx.Rngs"):
        LSTMCell(3, 4, rngs=0)


def test_docstring_examples_run():
    import doctest

    from nnxfn.nn import recurrent as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
