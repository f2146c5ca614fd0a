"""Type aliases, default initializers and small helpers shared by the dense
(`linear.py`) and convolution (`conv.py`) layers."""

from __future__ import annotations

import typing as tp
from types import MappingProxyType

import jax

from nnxfn.nn import initializers

Array = jax.Array
Dtype = tp.Any
Shape = tp.Sequence[int]
Initializer = tp.Callable[..., Array]
PrecisionLike = tp.Any
EMPTY: tp.Mapping[str, tp.Any] = MappingProxyType({})

default_kernel_init = initializers.lecun_normal()
default_bias_init = initializers.zeros_init()
default_embed_init = initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0)


def as_tuple(x: int | tp.Sequence[int]) -> tuple[int, ...]:
    return (x,) if isinstance(x, int) else tuple(x)


def normalize_axes(axes: tp.Sequence[int], ndim: int, layer: str) -> tuple[int, ...]:
    out = []
    for ax in axes:
        if not -ndim <= ax < ndim:
            raise ValueError(f"{layer}: axis {ax} is out of range for inputs of rank {ndim}.")
        out.append(ax % ndim)
    return tuple(out)


def sharding_kwargs(out_sharding: tp.Any, preferred: Dtype | None) -> dict[str, tp.Any]:
    kwargs: dict[str, tp.Any] = {}
    if out_sharding is not None:
        kwargs["out_sharding"] = out_sharding
    if preferred is not None:
        kwargs["preferred_element_type"] = preferred
    return kwargs
