"""Recurrent cells and the layers that run them over time.

Cells map `(carry, x_t) -> (new_carry, y_t)` for one time step:
`LSTMCell`, `OptimizedLSTMCell`, `GRUCell`, `SimpleCell` (Flax NNX
parameter names and shapes). `RNN` runs a cell over a sequence with
`jax.lax.scan`; `Bidirectional` runs one RNN forwards and one backwards.

>>> cell = LSTMCell(3, 4, rngs=Rngs(0))
>>> RNN(cell)(jnp.ones((2, 5, 3))).shape
(2, 5, 4)
"""

from __future__ import annotations

import typing as tp
from types import MappingProxyType

import jax
import jax.numpy as jnp

from nnxfn import core
from nnxfn.facade.module import Module
from nnxfn.facade.rngs import Rngs, RngStream
from nnxfn.facade.variables import Param, RngState
from nnxfn.transforms import Carry as Carry_
from nnxfn.transforms.rngs import split_rngs
from nnxfn.nn import initializers
from nnxfn.nn.dtypes import promote_dtype as default_promote_dtype
from nnxfn.nn.linear import Linear

Array = jax.Array
Carry = tp.Any
Initializer = tp.Callable[..., Array]
RngsLike = tp.Union[Rngs, RngStream, None]
_EMPTY: tp.Mapping[str, tp.Any] = MappingProxyType({})

default_kernel_init = initializers.lecun_normal()
default_bias_init = initializers.zeros


def modified_orthogonal(key: Array, shape: tp.Sequence[int], dtype: tp.Any = jnp.float32) -> Array:
    """Orthogonal init computed in float32 and cast to `dtype` (LSTMCell's recurrent default)."""
    return initializers.orthogonal()(key, shape, jnp.float32).astype(dtype)


def _stacked(init: Initializer, n: int) -> Initializer:
    """An initializer for `n` gate kernels side by side on the last axis, each drawn by `init`."""

    def stacked(key: Array, shape: tp.Sequence[int], dtype: tp.Any = jnp.float32) -> Array:
        *rest, total = shape
        keys = jax.random.split(key, n)
        return jnp.concatenate([init(k, (*rest, total // n), dtype) for k in keys], axis=-1)

    return stacked


# -- cells ------------------------------------------------------------------------------
class RNNCellBase(Module):
    """Base class of recurrent cells: `initialize_carry`, `__call__`, `num_feature_axes`."""

    in_features: int
    hidden_features: int

    def initialize_carry(
        self, input_shape: tuple[int, ...], rngs: RngsLike = None, carry_init: Initializer | None = None
    ) -> Carry:
        raise NotImplementedError

    def __call__(self, carry: Carry, inputs: Array) -> tuple[Carry, Array]:
        raise NotImplementedError

    @property
    def num_feature_axes(self) -> int:
        """How many trailing axes of an input step are features (1 for these cells)."""
        return 1

    # -- helpers shared by the cells -----------------------------------------------------
    def _init_cells(
        self, input_shape: tuple[int, ...], n: int, rngs: RngsLike, carry_init: Initializer | None
    ) -> list[Array]:
        """`n` carry arrays of shape `batch + (hidden_features,)`."""
        init = carry_init or getattr(self, "carry_init", None) or initializers.zeros
        shape = tuple(input_shape[:-1]) + (self.hidden_features,)
        dtype = getattr(self, "param_dtype", jnp.float32)
        if init is initializers.zeros:  # no key needed
            return [jnp.zeros(shape, dtype) for _ in range(n)]
        rngs = rngs if rngs is not None else getattr(self, "rngs", None)
        if rngs is None:
            raise ValueError(
                f"{type(self).__name__}.initialize_carry: this carry_init is random and "
                "needs a key. Pass `rngs=nnx.Rngs(0)`, or build the cell with "
                "`keep_rngs=True`."
            )
        stream = rngs.carry if isinstance(rngs, Rngs) else rngs
        return [init(stream(), shape, dtype) for _ in range(n)]

    def _check_inputs(self, inputs: Array, carry: Array) -> Array:
        inputs = jnp.asarray(inputs)
        if inputs.ndim < 1 or inputs.shape[-1] != self.in_features:
            raise ValueError(
                f"{type(self).__name__}: expected inputs of shape (..., {self.in_features}) "
                f"(in_features={self.in_features}), got shape {inputs.shape}."
            )
        if jnp.shape(carry)[-1:] != (self.hidden_features,):
            raise ValueError(
                f"{type(self).__name__}: expected a carry of shape (..., {self.hidden_features}) "
                f"(hidden_features={self.hidden_features}), got shape {jnp.shape(carry)}. "
                "Make it with `cell.initialize_carry(x_t.shape, rngs)`."
            )
        return inputs


def _linear(
    in_f: int,
    out_f: int,
    use_bias: bool,
    kernel_init: Initializer,
    bias_init: Initializer,
    cell: RNNCellBase,
    rngs: Rngs,
    kernel_metadata: tp.Mapping,
    bias_metadata: tp.Mapping,
) -> Linear:
    return Linear(
        in_f,
        out_f,
        use_bias=use_bias,
        kernel_init=kernel_init,
        bias_init=bias_init,
        dtype=cell.dtype,
        param_dtype=cell.param_dtype,
        promote_dtype=cell.promote_dtype,
        rngs=rngs,
        kernel_metadata=kernel_metadata,
        bias_metadata=bias_metadata,
    )


class _Cell(RNNCellBase):
    """Stores the constructor arguments every cell shares."""

    def _setup(
        self,
        in_features: int,
        hidden_features: int,
        *,
        dtype: tp.Any,
        param_dtype: tp.Any,
        carry_init: Initializer | None,
        promote_dtype: tp.Callable,
        keep_rngs: bool,
        rngs: Rngs,
    ) -> None:
        if not isinstance(rngs, Rngs):
            raise TypeError(
                f"{type(self).__name__}: `rngs` must be an nnx.Rngs, got {type(rngs).__name__}. "
                f"Use `{type(self).__name__}({in_features}, {hidden_features}, rngs=nnx.Rngs(0))`."
            )
        self.in_features = in_features
        self.hidden_features = hidden_features
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.promote_dtype = promote_dtype
        self.carry_init = carry_init
        self.rngs = rngs.carry.fork() if keep_rngs else None


class LSTMCell(_Cell):
    """Long short-term memory cell; carry `(c, h)`.

    i = σ(x W_ii + h W_hi + b_i), f = σ(x W_if + h W_hf + b_f),
    g = tanh(x W_ig + h W_hg + b_g), o = σ(x W_io + h W_ho + b_o),
    c' = f c + i g, h' = o tanh(c'). Sub-modules `ii, if_, ig, io` (no bias)
    and `hi, hf, hg, ho` (with bias).
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        gate_fn: tp.Callable[..., Array] = jax.nn.sigmoid,
        activation_fn: tp.Callable[..., Array] = jnp.tanh,
        kernel_init: Initializer = default_kernel_init,
        recurrent_kernel_init: Initializer = modified_orthogonal,
        bias_init: Initializer = default_bias_init,
        dtype: tp.Any = None,
        param_dtype: tp.Any = jnp.float32,
        carry_init: Initializer | None = None,
        promote_dtype: tp.Callable = default_promote_dtype,
        keep_rngs: bool = False,
        rngs: Rngs,
        kernel_metadata: tp.Mapping[str, tp.Any] = _EMPTY,
        recurrent_kernel_metadata: tp.Mapping[str, tp.Any] = _EMPTY,
        bias_metadata: tp.Mapping[str, tp.Any] = _EMPTY,
    ):
        self._setup(
            in_features,
            hidden_features,
            dtype=dtype,
            param_dtype=param_dtype,
            carry_init=carry_init,
            promote_dtype=promote_dtype,
            keep_rngs=keep_rngs,
            rngs=rngs,
        )
        self.gate_fn = gate_fn
        self.activation_fn = activation_fn
        for name in ("ii", "if_", "ig", "io"):
            setattr(
                self,
                name,
                _linear(
                    in_features,
                    hidden_features,
                    False,
                    kernel_init,
                    bias_init,
                    self,
                    rngs,
                    kernel_metadata,
                    {},
                ),
            )
        for name in ("hi", "hf", "hg", "ho"):
            setattr(
                self,
                name,
                _linear(
                    hidden_features,
                    hidden_features,
                    True,
                    recurrent_kernel_init,
                    bias_init,
                    self,
                    rngs,
                    recurrent_kernel_metadata,
                    bias_metadata,
                ),
            )

    def __call__(self, carry: tuple[Array, Array], inputs: Array) -> tuple[tuple[Array, Array], Array]:
        c, h = carry
        x = self._check_inputs(inputs, h)
        i = self.gate_fn(self.ii(x) + self.hi(h))
        f = self.gate_fn(self.if_(x) + self.hf(h))
        g = self.activation_fn(self.ig(x) + self.hg(h))
        o = self.gate_fn(self.io(x) + self.ho(h))
        new_c = f * c + i * g
        new_h = o * self.activation_fn(new_c)
        return (new_c, new_h), new_h

    def initialize_carry(
        self, input_shape: tuple[int, ...], rngs: RngsLike = None, carry_init: Initializer | None = None
    ) -> tuple[Array, Array]:
        c, h = self._init_cells(input_shape, 2, rngs, carry_init)
        return c, h


class OptimizedLSTMCell(_Cell):
    """`LSTMCell` with the four gates fused: `dense_i` (in, 4·hidden, no bias) and
    `dense_h` (hidden, 4·hidden, with bias); gate order i, f, g, o."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        gate_fn: tp.Callable[..., Array] = jax.nn.sigmoid,
        activation_fn: tp.Callable[..., Array] = jnp.tanh,
        kernel_init: Initializer = default_kernel_init,
        recurrent_kernel_init: Initializer = initializers.orthogonal(),
        bias_init: Initializer = default_bias_init,
        dtype: tp.Any = None,
        param_dtype: tp.Any = jnp.float32,
        carry_init: Initializer | None = None,
        promote_dtype: tp.Callable = default_promote_dtype,
        keep_rngs: bool = False,
        rngs: Rngs,
        kernel_metadata: tp.Mapping[str, tp.Any] = _EMPTY,
        recurrent_kernel_metadata: tp.Mapping[str, tp.Any] = _EMPTY,
        bias_metadata: tp.Mapping[str, tp.Any] = _EMPTY,
    ):
        self._setup(
            in_features,
            hidden_features,
            dtype=dtype,
            param_dtype=param_dtype,
            carry_init=carry_init,
            promote_dtype=promote_dtype,
            keep_rngs=keep_rngs,
            rngs=rngs,
        )
        self.gate_fn = gate_fn
        self.activation_fn = activation_fn
        self.dense_i = _linear(
            in_features,
            4 * hidden_features,
            False,
            _stacked(kernel_init, 4),
            bias_init,
            self,
            rngs,
            kernel_metadata,
            {},
        )
        self.dense_h = _linear(
            hidden_features,
            4 * hidden_features,
            True,
            _stacked(recurrent_kernel_init, 4),
            bias_init,
            self,
            rngs,
            recurrent_kernel_metadata,
            bias_metadata,
        )

    def __call__(self, carry: tuple[Array, Array], inputs: Array) -> tuple[tuple[Array, Array], Array]:
        c, h = carry
        x = self._check_inputs(inputs, h)
        i, f, g, o = jnp.split(self.dense_i(x) + self.dense_h(h), 4, axis=-1)
        new_c = self.gate_fn(f) * c + self.gate_fn(i) * self.activation_fn(g)
        new_h = self.gate_fn(o) * self.activation_fn(new_c)
        return (new_c, new_h), new_h

    def initialize_carry(
        self, input_shape: tuple[int, ...], rngs: RngsLike = None, carry_init: Initializer | None = None
    ) -> tuple[Array, Array]:
        c, h = self._init_cells(input_shape, 2, rngs, carry_init)
        return c, h


class GRUCell(_Cell):
    """Gated recurrent unit; carry `h`.

    With `[x_r, x_z, x_n] = dense_i(x)` (bias) and `[h_r, h_z, h_n] = dense_h(h)`
    (no bias): r = σ(x_r + h_r), z = σ(x_z + h_z), n = tanh(x_n + r h_n),
    h' = (1 - z) n + z h.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        gate_fn: tp.Callable[..., Array] = jax.nn.sigmoid,
        activation_fn: tp.Callable[..., Array] = jnp.tanh,
        kernel_init: Initializer = default_kernel_init,
        recurrent_kernel_init: Initializer = initializers.orthogonal(),
        bias_init: Initializer = default_bias_init,
        dtype: tp.Any = None,
        param_dtype: tp.Any = jnp.float32,
        carry_init: Initializer | None = None,
        promote_dtype: tp.Callable = default_promote_dtype,
        keep_rngs: bool = False,
        rngs: Rngs,
        kernel_metadata: tp.Mapping[str, tp.Any] = _EMPTY,
        recurrent_kernel_metadata: tp.Mapping[str, tp.Any] = _EMPTY,
        bias_metadata: tp.Mapping[str, tp.Any] = _EMPTY,
    ):
        self._setup(
            in_features,
            hidden_features,
            dtype=dtype,
            param_dtype=param_dtype,
            carry_init=carry_init,
            promote_dtype=promote_dtype,
            keep_rngs=keep_rngs,
            rngs=rngs,
        )
        self.gate_fn = gate_fn
        self.activation_fn = activation_fn
        self.dense_i = _linear(
            in_features,
            3 * hidden_features,
            True,
            _stacked(kernel_init, 3),
            bias_init,
            self,
            rngs,
            kernel_metadata,
            bias_metadata,
        )
        self.dense_h = _linear(
            hidden_features,
            3 * hidden_features,
            False,
            _stacked(recurrent_kernel_init, 3),
            bias_init,
            self,
            rngs,
            recurrent_kernel_metadata,
            {},
        )

    def __call__(self, carry: Array, inputs: Array) -> tuple[Array, Array]:
        h = carry
        x = self._check_inputs(inputs, h)
        x_r, x_z, x_n = jnp.split(self.dense_i(x), 3, axis=-1)
        h_r, h_z, h_n = jnp.split(self.dense_h(h), 3, axis=-1)
        r = self.gate_fn(x_r + h_r)
        z = self.gate_fn(x_z + h_z)
        n = self.activation_fn(x_n + r * h_n)
        new_h = (1.0 - z) * n + z * h
        return new_h, new_h

    def initialize_carry(
        self, input_shape: tuple[int, ...], rngs: RngsLike = None, carry_init: Initializer | None = None
    ) -> Array:
        return self._init_cells(input_shape, 1, rngs, carry_init)[0]


class SimpleCell(_Cell):
    """Elman cell: h' = act(dense_i(x) + dense_h(h) [+ h if residual]); carry `h`.

    `dense_i` (in, hidden) has the bias, `dense_h` (hidden, hidden) has none.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        dtype: tp.Any = jnp.float32,
        param_dtype: tp.Any = jnp.float32,
        carry_init: Initializer | None = None,
        residual: bool = False,
        activation_fn: tp.Callable[..., Array] = jnp.tanh,
        kernel_init: Initializer = default_kernel_init,
        recurrent_kernel_init: Initializer = initializers.orthogonal(),
        bias_init: Initializer = default_bias_init,
        promote_dtype: tp.Callable = default_promote_dtype,
        keep_rngs: bool = False,
        rngs: Rngs,
        kernel_metadata: tp.Mapping[str, tp.Any] = _EMPTY,
        recurrent_kernel_metadata: tp.Mapping[str, tp.Any] = _EMPTY,
        bias_metadata: tp.Mapping[str, tp.Any] = _EMPTY,
    ):
        self._setup(
            in_features,
            hidden_features,
            dtype=dtype,
            param_dtype=param_dtype,
            carry_init=carry_init,
            promote_dtype=promote_dtype,
            keep_rngs=keep_rngs,
            rngs=rngs,
        )
        self.residual = residual
        self.activation_fn = activation_fn
        self.dense_h = _linear(
            hidden_features,
            hidden_features,
            False,
            recurrent_kernel_init,
            bias_init,
            self,
            rngs,
            recurrent_kernel_metadata,
            {},
        )
        self.dense_i = _linear(
            in_features,
            hidden_features,
            True,
            kernel_init,
            bias_init,
            self,
            rngs,
            kernel_metadata,
            bias_metadata,
        )

    def __call__(self, carry: Array, inputs: Array) -> tuple[Array, Array]:
        x = self._check_inputs(inputs, carry)
        pre = self.dense_i(x) + self.dense_h(carry)
        if self.residual:
            pre = pre + carry
        new_h = self.activation_fn(pre)
        return new_h, new_h

    def initialize_carry(
        self, input_shape: tuple[int, ...], rngs: RngsLike = None, carry_init: Initializer | None = None
    ) -> Array:
        return self._init_cells(input_shape, 1, rngs, carry_init)[0]


# -- running a cell over time ----------------------------------------------------------------
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
        state_axes: tp.Mapping[tp.Any, tp.Any] | None = None,
        broadcast_rngs: tp.Any = None,
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
        if isinstance(rngs, Rngs):
            self.rngs = rngs.carry.fork()
        elif isinstance(rngs, RngStream):
            self.rngs = rngs
        else:
            self.rngs = RngStream(jax.random.key(0), tag="carry") if rngs else None
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
    ) -> tp.Any:
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
    broadcast: tp.Any,
    fixed: tp.Any,
) -> tuple[Carry, tp.Any]:
    """Scan `cell` over axis 0 of `xs`; the cell's non-Param state (e.g. Rngs
    counts) is threaded through the loop and written back to `cell`, except:
    `broadcast` state every step sees as it was (its writes are not kept) and
    `fixed` state, which, like Params, must stay unchanged."""
    graphdef, params, shared, constant, rest = core.split(cell, Param, broadcast, fixed, ...)
    constant_leaves = jax.tree.leaves((params, constant))

    def step(loop: tuple, x_t: Array) -> tuple[tuple, tp.Any]:
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
        if isinstance(rngs, Rngs):
            self.rngs = rngs.carry.fork()
        elif isinstance(rngs, RngStream):
            self.rngs = rngs
        else:
            self.rngs = RngStream(jax.random.key(0), tag="carry") if rngs else None

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
    ) -> tp.Any:
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
