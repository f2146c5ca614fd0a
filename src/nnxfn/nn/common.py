"""Default initializers and small helpers shared by the dense (`linear.py`),
convolution (`conv.py`) and normalization layers (the type aliases they share
are in `types.py`)."""

from __future__ import annotations

import typing as tp

from nnxfn.nn import initializers
from nnxfn.nn.types import Dtype, ShardingLike

default_kernel_init = initializers.lecun_normal()
default_bias_init = initializers.zeros_init()
default_embed_init = initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0)


def int_tuple(x: int | tp.Sequence[int]) -> tuple[int, ...]:
    return (x,) if isinstance(x, int) else tuple(x)


def normalize_axes(axes: tp.Sequence[int], ndim: int, layer: str) -> tuple[int, ...]:
    out = []
    for ax in axes:
        if not -ndim <= ax < ndim:
            raise ValueError(f"{layer}: axis {ax} is out of range for inputs of rank {ndim}.")
        out.append(ax % ndim)
    return tuple(out)


class PreferredKwargs(tp.TypedDict, total=False):
    """`preferred_element_type=` of a product or convolution, absent unless set (so a
    replacement function that does not take it, e.g. one a quantization library
    installs, still works)."""

    preferred_element_type: Dtype


class DotKwargs(PreferredKwargs, total=False):
    """The optional keywords of a `dot_general`/`einsum` call, absent unless set."""

    out_sharding: ShardingLike


def sharding_kwargs(out_sharding: ShardingLike, preferred: Dtype | None) -> DotKwargs:
    kwargs: DotKwargs = {}
    if out_sharding is not None:
        kwargs["out_sharding"] = out_sharding
    if preferred is not None:
        kwargs["preferred_element_type"] = preferred
    return kwargs
