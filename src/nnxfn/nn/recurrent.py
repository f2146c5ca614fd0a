"""Recurrent layers: `RNN` runs a cell over a sequence with `jax.lax.scan`;
`Bidirectional` runs one RNN forwards and one backwards. The cells
(`LSTMCell`, `OptimizedLSTMCell`, `GRUCell`, `SimpleCell`; see
`recurrent_cells.py`) are importable from here too, as in Flax.

>>> cell = LSTMCell(3, 4, rngs=Rngs(0))
>>> RNN(cell)(jnp.ones((2, 5, 3))).shape
(2, 5, 4)
"""

from __future__ import annotations

import typing as tp

import jax
import jax.numpy as jnp

from nnxfn import core
from nnxfn.core import Filter
from nnxfn.facade.module import Module
from nnxfn.facade.rngs import Rngs, RngStream
from nnxfn.facade.variables import Param, RngState
from nnxfn.transforms import Carry as Carry_
from nnxfn.transforms.rngs import split_rngs
from nnxfn.nn.recurrent_cells import (
    Carry,
    GRUCell as GRUCell,
    LSTMCell as LSTMCell,
    OptimizedLSTMCell as OptimizedLSTMCell,
    PyTree,
    RNNCellBase as RNNCellBase,
    SimpleCell as SimpleCell,
    modified_orthogonal as modified_orthogonal,
)
from nnxfn.nn.types import Array


def flip_sequences(
    inputs: Array, seq_lengths: Array | None, num_batch_dims: int = 1, time_major: bool = True
) -> Array:
    """Reverse `inputs` along time (axis 0 if `time_major`, else the axis after the
    `num_batch_dims` batch axes); with `seq_lengths` (one per sequence), reverse only
    the first `L` steps of each sequence (padding is reversed among itself, at the end)."""
    time_axis = 0 if time_major else num_batch_dims
    xs = jnp.moveaxis(inputs, time_axis, 0)
    if seq_lengths is None:
        return jnp.moveaxis(jnp.flip(xs, axis=0), 0, time_axis)
    steps = xs.shape[0]
    lengths = jnp.asarray(seq_lengths)
    t = jnp.arange(steps).reshape((steps,) + (1,) * lengths.ndim)
    idx = (steps - 1 - t + lengths[None]) % steps  # (T, *batch)
    idx = idx.reshape(idx.shape + (1,) * (xs.ndim - idx.ndim))
    return jnp.moveaxis(jnp.take_along_axis(xs, idx, axis=0), 0, time_axis)


def _carry_stream(rngs: Rngs | RngStream | bool) -> RngStream | None:
    """The stream a layer draws initial carries from: a fork of `rngs.carry`, the
    stream given, a fixed one (`True`) or none (`False`)."""
    if isinstance(rngs, Rngs):
        return rngs.carry.fork()
    if isinstance(rngs, RngStream):
        return rngs
    return RngStream(jax.random.key(0), tag="carry") if rngs else None


def _select(keep: Array, new: Array, old: Array) -> Array:
    keep = keep.reshape(keep.shape + (1,) * (jnp.ndim(new) - keep.ndim))
    return jnp.where(keep, new, old)


class RNN(Module):
    """Run `cell` over the time axis of `inputs` with `jax.lax.scan`.

    Inputs are `(*batch, time, *features)` (or `(time, *batch, *features)` with
    `time_major=True`). With `seq_lengths` (shape `batch`), the returned carry is
    the one after step `seq_lengths - 1`; outputs past a sequence's length are
    still computed (as in Flax) and should be ignored. `reverse=True` processes
    each sequence from its last valid step; `keep_order=True` then returns the
    outputs in input order.
    """

    def __init__(
        self,
        cell: RNNCellBase,
        *,
        time_major: bool = False,
        return_carry: bool = False,
        reverse: bool = False,
        keep_order: bool = False,
        unroll: int = 1,
        state_axes: tp.Mapping[Filter, object] | None = None,
        broadcast_rngs: Filter | None = None,
        rngs: Rngs | RngStream | bool = True,
    ):
        if not isinstance(cell, Module) or not hasattr(cell, "initialize_carry"):
            raise TypeError(
                f"RNN: `cell` must be a recurrent cell Module with `initialize_carry` "
                f"(e.g. nnx.LSTMCell), got {type(cell).__name__}."
            )
        self.cell = cell
        self.time_major = time_major
        self.return_carry = return_carry
        self.reverse = reverse
        self.keep_order = keep_order
        self.unroll = unroll
        self.rngs = _carry_stream(rngs)
        for f, axis in dict(state_axes or {}).items():
            if axis is not None and axis is not Carry_:
                raise NotImplementedError(
                    f"RNN: state_axes maps {f!r} to {axis!r}; only nnx.Carry (the cell's "
                    "state threads through the time steps, the default) and None (every step "
                    "sees the same value) are supported."
                )
        self.state_axes = dict(state_axes) if state_axes else None
        self.broadcast_rngs = broadcast_rngs

    def __call__(
        self,
        inputs: Array,
        *,
        initial_carry: Carry | None = None,
        seq_lengths: Array | None = None,
        return_carry: bool | None = None,
        time_major: bool | None = None,
        reverse: bool | None = None,
        keep_order: bool | None = None,
        rngs: Rngs | RngStream | None = None,
    ) -> PyTree:
        """The outputs, or `(carry, outputs)` with `return_carry`."""
        return_carry = self.return_carry if return_carry is None else return_carry
        time_major = self.time_major if time_major is None else time_major
        reverse = self.reverse if reverse is None else reverse
        keep_order = self.keep_order if keep_order is None else keep_order

        inputs = jnp.asarray(inputs)
        n_feat = self.cell.num_feature_axes
        if inputs.ndim < n_feat + 1:
            raise ValueError(
                f"RNN: expected inputs of shape (*batch, time, *features) with {n_feat} feature "
                f"axis(es) and at least one time axis, got shape {inputs.shape}."
            )
        time_axis = 0 if time_major else inputs.ndim - n_feat - 1
        xs = jnp.moveaxis(inputs, time_axis, 0)  # (time, *batch, *features)
        batch_shape = xs.shape[1 : xs.ndim - n_feat]
        if seq_lengths is not None:
            seq_lengths = jnp.asarray(seq_lengths)
            if seq_lengths.shape != batch_shape:
                raise ValueError(
                    f"RNN: `seq_lengths` must have the batch shape {batch_shape} of inputs "
                    f"{inputs.shape}, got shape {seq_lengths.shape}."
                )
        if reverse:
            xs = flip_sequences(xs, seq_lengths)
        if initial_carry is None:
            initial_carry = self.cell.initialize_carry(xs.shape[1:], rngs if rngs is not None else self.rngs)

        # Each time step sees the broadcast streams as they were (each call forks
        # them once: the steps of one call agree, calls differ) and the state
        # state_axes maps to None (which must not change inside the loop).
        fixed = core.Any(*[f for f, axis in (self.state_axes or {}).items() if axis is None])
        if self.broadcast_rngs is not None:
            broadcast = core.All(RngState, self.broadcast_rngs)
            with split_rngs(self.cell, splits=1, only=self.broadcast_rngs, squeeze=True):
                carry, ys = _scan_cell(
                    self.cell, initial_carry, xs, seq_lengths, self.unroll, broadcast, fixed
                )
        else:
            carry, ys = _scan_cell(
                self.cell, initial_carry, xs, seq_lengths, self.unroll, core.Nothing(), fixed
            )
        if reverse and keep_order:
            ys = jax.tree.map(lambda y: flip_sequences(y, seq_lengths), ys)
        if not time_major:
            ys = jax.tree.map(lambda y: jnp.moveaxis(y, 0, len(batch_shape)), ys)
        return (carry, ys) if return_carry else ys


def _scan_cell(
    cell: Module,
    carry: Carry,
    xs: Array,
    seq_lengths: Array | None,
    unroll: int,
    broadcast: Filter,
    fixed: Filter,
) -> tuple[Carry, PyTree]:
    """Scan `cell` over axis 0 of `xs`; the cell's non-Param state (e.g. Rngs
    counts) is threaded through the loop and written back to `cell`, except:
    `broadcast` state every step sees as it was (its writes are not kept) and
    `fixed` state, which, like Params, must stay unchanged."""
    graphdef, params, shared, constant, rest = core.split(cell, Param, broadcast, fixed, ...)
    constant_leaves = jax.tree.leaves((params, constant))

    def step(loop: tuple, x_t: Array) -> tuple[tuple, PyTree]:
        rest_t, carry_t, last_t, t = loop
        live = core.merge(graphdef, params, shared, constant, rest_t, copy=True)  # closed over: copies
        new_carry, y = live(carry_t, x_t)
        _, params_after, _, constant_after, rest_after = core.split(live, Param, broadcast, fixed, ...)
        after = jax.tree.leaves((params_after, constant_after))
        if any(a is not b for a, b in zip(after, constant_leaves)):
            raise RuntimeError(
                f"RNN: {type(cell).__name__} changed a Param (or state that state_axes maps "
                "to None) inside the time loop; those are loop constants. Keep per-step "
                "state in the carry or a Variable state_axes threads through (nnx.Carry)."
            )
        if seq_lengths is not None:
            last_t = jax.tree.map(lambda n, o: _select(t < seq_lengths, n, o), new_carry, last_t)
        return (rest_after, new_carry, last_t, t + 1), y

    init = (rest, carry, carry, jnp.zeros((), jnp.int32))
    (rest, carry, last, _), ys = jax.lax.scan(step, init, xs, unroll=unroll)
    core.update(cell, rest)
    return (carry if seq_lengths is None else last), ys


def _concatenate(a: Array, b: Array) -> Array:
    return jnp.concatenate([a, b], axis=-1)


class Bidirectional(Module):
    """Run `forward_rnn` forwards and `backward_rnn` backwards (outputs in input
    order) and merge their outputs with `merge_fn` (concatenation by default).
    The carry is `(forward_carry, backward_carry)`."""

    def __init__(
        self,
        forward_rnn: RNN,
        backward_rnn: RNN,
        *,
        merge_fn: tp.Callable[[Array, Array], Array] = _concatenate,
        time_major: bool = False,
        return_carry: bool = False,
        rngs: Rngs | RngStream | bool = True,
    ):
        self.forward_rnn = forward_rnn
        self.backward_rnn = backward_rnn
        self.merge_fn = merge_fn
        self.time_major = time_major
        self.return_carry = return_carry
        # the stream both directions draw initial carries from when a call passes no rngs
        self.rngs = _carry_stream(rngs)

    def __call__(
        self,
        inputs: Array,
        *,
        initial_carry: tuple[Carry, Carry] | None = None,
        rngs: Rngs | RngStream | None = None,
        seq_lengths: Array | None = None,
        return_carry: bool | None = None,
        time_major: bool | None = None,
        reverse: bool | None = None,
        keep_order: bool | None = None,
    ) -> PyTree:
        """`reverse`/`keep_order` are accepted for signature compatibility and ignored:
        the backward direction always runs reversed and keeps input order."""
        return_carry = self.return_carry if return_carry is None else return_carry
        time_major = self.time_major if time_major is None else time_major
        rngs = self.rngs if rngs is None else rngs
        fw0, bw0 = (None, None) if initial_carry is None else initial_carry
        fw_carry, fw_out = self.forward_rnn(
            inputs,
            initial_carry=fw0,
            seq_lengths=seq_lengths,
            return_carry=True,
            time_major=time_major,
            reverse=False,
            rngs=rngs,
        )
        bw_carry, bw_out = self.backward_rnn(
            inputs,
            initial_carry=bw0,
            seq_lengths=seq_lengths,
            return_carry=True,
            time_major=time_major,
            reverse=True,
            keep_order=True,
            rngs=rngs,
        )
        outputs = jax.tree.map(self.merge_fn, fw_out, bw_out)
        return ((fw_carry, bw_carry), outputs) if return_carry else outputs


__all__ = [
    "Bidirectional",
    "GRUCell",
    "LSTMCell",
    "OptimizedLSTMCell",
    "RNN",
    "RNNCellBase",
    "SimpleCell",
    "flip_sequences",
    "modified_orthogonal",
]
