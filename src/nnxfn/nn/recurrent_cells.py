"""Recurrent cells: one time step `(carry, x_t) -> (new_carry, y_t)`.

`LSTMCell`, `OptimizedLSTMCell`, `GRUCell` and `SimpleCell` have Flax NNX's
parameter names and shapes; `RNN` (in `recurrent.py`, which re-exports
them) runs a cell over a sequence.

>>> cell = GRUCell(3, 4, rngs=Rngs(0))
>>> carry = cell.initialize_carry((2, 3))
>>> carry, y = cell(carry, jnp.ones((2, 3)))
>>> y.shape
(2, 4)
"""

from __future__ import annotations

import typing as tp

import jax
import jax.numpy as jnp

from nnxfn.facade.module import Module
from nnxfn.facade.rngs import Rngs, RngStream
from nnxfn.nn import initializers
from nnxfn.nn.dtypes import PromoteDtypeFn, promote_dtype as default_promote_dtype
from nnxfn.nn.linear import Linear
from nnxfn.nn.types import EMPTY_METADATA, Array, Dtype, Initializer, Metadata

# A pytree of arrays: a cell's carry (an array, `(c, h)` for the LSTMs) or its
# per-step output. Each cell narrows it in its own signature.
PyTree = tp.Any
Carry = PyTree
RngsLike = tp.Union[Rngs, RngStream, None]
Activation = tp.Callable[[Array], Array]

default_kernel_init = initializers.lecun_normal()
default_bias_init = initializers.zeros


def modified_orthogonal(key: Array, shape: tp.Sequence[int], dtype: Dtype = jnp.float32) -> Array:
    """Orthogonal init computed in float32 and cast to `dtype` (LSTMCell's recurrent default)."""
    return initializers.orthogonal()(key, shape, jnp.float32).astype(dtype)


def _stacked(init: Initializer, n: int) -> Initializer:
    """An initializer for `n` gate kernels side by side on the last axis, each drawn by `init`."""

    def stacked(key: Array, shape: tp.Sequence[int], dtype: Dtype = jnp.float32) -> Array:
        *rest, total = shape
        keys = jax.random.split(key, n)
        return jnp.concatenate([init(k, (*rest, total // n), dtype) for k in keys], axis=-1)

    return stacked


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


class _Cell(RNNCellBase):
    """Stores the constructor arguments every cell shares."""

    dtype: Dtype | None
    param_dtype: Dtype
    promote_dtype: PromoteDtypeFn
    carry_init: Initializer | None
    rngs: RngStream | None

    def _setup(
        self,
        in_features: int,
        hidden_features: int,
        *,
        dtype: Dtype | None,
        param_dtype: Dtype,
        carry_init: Initializer | None,
        promote_dtype: PromoteDtypeFn,
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

    def _linear(
        self,
        in_f: int,
        out_f: int,
        use_bias: bool,
        kernel_init: Initializer,
        bias_init: Initializer,
        rngs: Rngs,
        kernel_metadata: Metadata,
        bias_metadata: Metadata,
    ) -> Linear:
        return Linear(
            in_f,
            out_f,
            use_bias=use_bias,
            kernel_init=kernel_init,
            bias_init=bias_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            promote_dtype=self.promote_dtype,
            rngs=rngs,
            kernel_metadata=kernel_metadata,
            bias_metadata=bias_metadata,
        )


class LSTMCell(_Cell):
    """Long short-term memory cell; carry `(c, h)`.

    i = σ(x W_ii + h W_hi + b_i), f = σ(x W_if + h W_hf + b_f),
    g = tanh(x W_ig + h W_hg + b_g), o = σ(x W_io + h W_ho + b_o),
    c' = f c + i g, h' = o tanh(c'). Sub-modules `ii, if_, ig, io` (no bias)
    and `hi, hf, hg, ho` (with bias).
    """

    gate_fn: Activation
    activation_fn: Activation
    ii: Linear
    if_: Linear
    ig: Linear
    io: Linear
    hi: Linear
    hf: Linear
    hg: Linear
    ho: Linear

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        gate_fn: Activation = jax.nn.sigmoid,
        activation_fn: Activation = jnp.tanh,
        kernel_init: Initializer = default_kernel_init,
        recurrent_kernel_init: Initializer = modified_orthogonal,
        bias_init: Initializer = default_bias_init,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        carry_init: Initializer | None = None,
        promote_dtype: PromoteDtypeFn = default_promote_dtype,
        keep_rngs: bool = False,
        rngs: Rngs,
        kernel_metadata: Metadata = EMPTY_METADATA,
        recurrent_kernel_metadata: Metadata = EMPTY_METADATA,
        bias_metadata: Metadata = EMPTY_METADATA,
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
            layer = self._linear(
                in_features,
                hidden_features,
                False,
                kernel_init,
                bias_init,
                rngs,
                kernel_metadata,
                EMPTY_METADATA,
            )
            setattr(self, name, layer)
        for name in ("hi", "hf", "hg", "ho"):
            layer = self._linear(
                hidden_features,
                hidden_features,
                True,
                recurrent_kernel_init,
                bias_init,
                rngs,
                recurrent_kernel_metadata,
                bias_metadata,
            )
            setattr(self, name, layer)

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


class _FusedCell(_Cell):
    """The constructor of OptimizedLSTMCell and GRUCell: the kernels of all
    `_n_gates` gates side by side in two Linears, `dense_i` (in_features ->
    n·hidden) and `dense_h` (hidden -> n·hidden), each gate's block drawn by
    its own call of the initializer; the bias is on `dense_i` if
    `_bias_on_input`, else on `dense_h`."""

    _n_gates: tp.ClassVar[int]
    _bias_on_input: tp.ClassVar[bool]
    gate_fn: Activation
    activation_fn: Activation
    dense_i: Linear
    dense_h: Linear

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        gate_fn: Activation = jax.nn.sigmoid,
        activation_fn: Activation = jnp.tanh,
        kernel_init: Initializer = default_kernel_init,
        recurrent_kernel_init: Initializer = initializers.orthogonal(),
        bias_init: Initializer = default_bias_init,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        carry_init: Initializer | None = None,
        promote_dtype: PromoteDtypeFn = default_promote_dtype,
        keep_rngs: bool = False,
        rngs: Rngs,
        kernel_metadata: Metadata = EMPTY_METADATA,
        recurrent_kernel_metadata: Metadata = EMPTY_METADATA,
        bias_metadata: Metadata = EMPTY_METADATA,
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
        n, on_input = self._n_gates, self._bias_on_input
        self.dense_i = self._linear(
            in_features,
            n * hidden_features,
            on_input,
            _stacked(kernel_init, n),
            bias_init,
            rngs,
            kernel_metadata,
            bias_metadata if on_input else EMPTY_METADATA,
        )
        self.dense_h = self._linear(
            hidden_features,
            n * hidden_features,
            not on_input,
            _stacked(recurrent_kernel_init, n),
            bias_init,
            rngs,
            recurrent_kernel_metadata,
            EMPTY_METADATA if on_input else bias_metadata,
        )


class OptimizedLSTMCell(_FusedCell):
    """`LSTMCell` with the four gates fused: `dense_i` (in, 4·hidden, no bias) and
    `dense_h` (hidden, 4·hidden, with bias); gate order i, f, g, o."""

    _n_gates = 4
    _bias_on_input = False

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


class GRUCell(_FusedCell):
    """Gated recurrent unit; carry `h`.

    With `[x_r, x_z, x_n] = dense_i(x)` (bias) and `[h_r, h_z, h_n] = dense_h(h)`
    (no bias): r = σ(x_r + h_r), z = σ(x_z + h_z), n = tanh(x_n + r h_n),
    h' = (1 - z) n + z h.
    """

    _n_gates = 3
    _bias_on_input = True

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

    residual: bool
    activation_fn: Activation
    dense_h: Linear
    dense_i: Linear

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        dtype: Dtype | None = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        carry_init: Initializer | None = None,
        residual: bool = False,
        activation_fn: Activation = jnp.tanh,
        kernel_init: Initializer = default_kernel_init,
        recurrent_kernel_init: Initializer = initializers.orthogonal(),
        bias_init: Initializer = default_bias_init,
        promote_dtype: PromoteDtypeFn = default_promote_dtype,
        keep_rngs: bool = False,
        rngs: Rngs,
        kernel_metadata: Metadata = EMPTY_METADATA,
        recurrent_kernel_metadata: Metadata = EMPTY_METADATA,
        bias_metadata: Metadata = EMPTY_METADATA,
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
        self.dense_h = self._linear(
            hidden_features,
            hidden_features,
            False,
            recurrent_kernel_init,
            bias_init,
            rngs,
            recurrent_kernel_metadata,
            EMPTY_METADATA,
        )
        self.dense_i = self._linear(
            in_features,
            hidden_features,
            True,
            kernel_init,
            bias_init,
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


__all__ = [
    "GRUCell",
    "LSTMCell",
    "OptimizedLSTMCell",
    "RNNCellBase",
    "SimpleCell",
    "modified_orthogonal",
]
