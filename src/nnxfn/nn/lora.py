"""Low-rank adaptation (LoRA): `y = base(x) + x @ lora_a @ lora_b`.

`LoRA` holds the two low-rank factors (and optionally wraps a base module);
`LoRALinear` is a `Linear` with a `lora` sub-module added to its output.
The factors are `LoRAParam`s, a `Param` subclass, so `nnx.grad`/optimizers
can target just them with `wrt=nnx.LoRAParam`.

>>> layer = LoRALinear(3, 4, lora_rank=2, rngs=Rngs(0))
>>> layer(jnp.ones((1, 3))).shape
(1, 4)
"""

from __future__ import annotations

import typing as tp

import jax.numpy as jnp

from nnxfn.facade.module import Module
from nnxfn.facade.rngs import Rngs
from nnxfn.facade.variables import Param, Variable
from nnxfn.nn import initializers
from nnxfn.nn.attention_ops import PromoteDtypeFn, promote_dtype as default_promote_dtype
from nnxfn.nn.linear import Linear
from nnxfn.nn.types import EMPTY_METADATA, Array, Dtype, Initializer, Metadata, ShardingLike

default_a_initializer = initializers.he_uniform()
default_b_initializer = initializers.zeros

A = tp.TypeVar("A")


class LoRAParam(Param[A]):
    """A LoRA factor: a `Param`, distinguishable by type from the base weights."""


class LoRA(Module):
    """`x @ lora_a @ lora_b`, plus `base_module(x)` when a base module is given.

    `lora_a` has shape (in_features, lora_rank), `lora_b` (lora_rank, out_features);
    `b_initializer` defaults to zeros, so a fresh LoRA leaves the base output unchanged.
    """

    def __init__(
        self,
        in_features: int,
        lora_rank: int,
        out_features: int,
        *,
        base_module: tp.Callable[..., Array] | None = None,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        a_initializer: Initializer = default_a_initializer,
        b_initializer: Initializer = default_b_initializer,
        lora_param_type: type[Variable] = LoRAParam,
        promote_dtype: PromoteDtypeFn = default_promote_dtype,
        rngs: Rngs,
        a_metadata: Metadata = EMPTY_METADATA,
        b_metadata: Metadata = EMPTY_METADATA,
    ):
        if base_module is not None and not callable(base_module):
            raise TypeError(
                f"LoRA: `base_module` must be callable (e.g. an nnx.Linear), got "
                f"{type(base_module).__name__}."
            )
        if lora_rank < 1:
            raise ValueError(f"LoRA: `lora_rank` must be >= 1, got {lora_rank}.")
        self.in_features = in_features
        self.out_features = out_features
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.lora_param_type = lora_param_type
        self.base_module = base_module
        self.promote_dtype = promote_dtype
        self.lora_a = lora_param_type(
            a_initializer(rngs.params(), (in_features, lora_rank), param_dtype), **a_metadata
        )
        self.lora_b = lora_param_type(
            b_initializer(rngs.params(), (lora_rank, out_features), param_dtype), **b_metadata
        )

    def __call__(self, x: Array, **kwargs: object) -> Array:
        """`kwargs` are passed to `base_module`."""
        x = jnp.asarray(x)
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"LoRA: expected inputs of shape (..., {self.in_features}) "
                f"(last axis = in_features), got shape {x.shape}."
            )
        x, a, b = self.promote_dtype((x, self.lora_a[...], self.lora_b[...]), dtype=self.dtype)
        out = x @ a @ b
        if self.base_module is not None:
            out = self.base_module(x, **kwargs) + out
        return out


class LoRALinear(Linear):
    """A `Linear` (same arguments, in `**kwargs`) plus a `lora` sub-module:
    `y = x @ kernel + bias + x @ lora.lora_a @ lora.lora_b`."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        lora_rank: int,
        lora_dtype: Dtype | None = None,
        lora_param_dtype: Dtype = jnp.float32,
        a_initializer: Initializer = default_a_initializer,
        b_initializer: Initializer = default_b_initializer,
        lora_param_type: type[Variable] = LoRAParam,
        lora_promote_dtype: PromoteDtypeFn = default_promote_dtype,
        rngs: Rngs,
        a_metadata: Metadata = EMPTY_METADATA,
        b_metadata: Metadata = EMPTY_METADATA,
        **kwargs: tp.Any,  # Linear's arguments
    ):
        super().__init__(in_features, out_features, rngs=rngs, **kwargs)
        self.lora = LoRA(
            in_features,
            lora_rank,
            out_features,
            dtype=lora_dtype,
            param_dtype=lora_param_dtype,
            a_initializer=a_initializer,
            b_initializer=b_initializer,
            lora_param_type=lora_param_type,
            promote_dtype=lora_promote_dtype,
            rngs=rngs,
            a_metadata=a_metadata,
            b_metadata=b_metadata,
        )

    def __call__(self, x: Array, out_sharding: ShardingLike = None) -> Array:
        y = super().__call__(x, out_sharding=out_sharding)
        return y + self.lora(x)


__all__ = ["LoRA", "LoRALinear", "LoRAParam"]
