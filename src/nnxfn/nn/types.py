"""Type aliases the layers share (what Flax keeps in `flax.typing`).

>>> import jax.numpy as jnp
>>> from nnxfn.nn.types import EMPTY_METADATA, Dtype
>>> dtype: Dtype = jnp.bfloat16
>>> dict(EMPTY_METADATA)
{}
"""

from __future__ import annotations

import typing as tp
from types import MappingProxyType

import jax
from jax import lax

Array = jax.Array
#: A dtype as JAX takes it: `jnp.float32`, `np.dtype('bfloat16')`, `'float16'`, ...
Dtype = jax.typing.DTypeLike
Shape = tp.Sequence[int]
#: One axis or several.
Axes = tp.Union[int, tp.Sequence[int]]
#: `init(key, shape, dtype) -> Array`, e.g. the builders of `nnxfn.nn.initializers`.
Initializer = tp.Callable[..., Array]
#: The `precision=` of `lax.dot_general`.
PrecisionLike = tp.Union[None, str, lax.Precision, tuple[str, str], tuple[lax.Precision, lax.Precision]]
#: A function called like `lax.dot_general(lhs, rhs, dimension_numbers, precision=...)`.
DotGeneral = tp.Callable[..., Array]
#: The `axis_index_groups=` of `lax.pmean`.
AxisIndexGroups = tp.Optional[tp.Sequence[tp.Sequence[int]]]
#: The `out_sharding=` of a layer call: a `NamedSharding`, or a `PartitionSpec` under `jax.set_mesh`.
ShardingLike = tp.Union[jax.sharding.NamedSharding, jax.sharding.PartitionSpec, None]
#: Keyword metadata given to a Variable, e.g. `kernel_metadata={'sharding': ('in', 'out')}`
#: (values of any type: they reach keyword parameters such as `hijax: bool`).
Metadata = tp.Mapping[str, tp.Any]
#: The default of the `*_metadata` arguments (read-only, so a shared default is safe).
EMPTY_METADATA: Metadata = MappingProxyType({})
