"""Lifted JAX transforms; see README.md in this folder."""

from nnxfn.transforms.autodiff import (
    DiffState as DiffState,
    checkpoint as checkpoint,
    grad as grad,
    jvp as jvp,
    remat as remat,
    value_and_grad as value_and_grad,
    vjp as vjp,
)
from nnxfn.transforms.axes import StateAxes as StateAxes
from nnxfn.transforms.control_flow import (
    cond as cond,
    fori_loop as fori_loop,
    switch as switch,
    while_loop as while_loop,
)
from nnxfn.transforms.custom import custom_vjp as custom_vjp
from nnxfn.transforms.jit import JitWrapped as JitWrapped, jit as jit
from nnxfn.transforms.misc import (
    checkify as checkify,
    eval_shape as eval_shape,
    make_jaxpr as make_jaxpr,
    shard_map as shard_map,
)
from nnxfn.transforms.rngs import (
    fork_rngs as fork_rngs,
    restore_rngs as restore_rngs,
    split_rngs as split_rngs,
    with_rngs as with_rngs,
)
from nnxfn.transforms.scan import Carry as Carry, scan as scan
from nnxfn.transforms.sharding import StateSharding as StateSharding
from nnxfn.transforms.vmap import pmap as pmap, vmap as vmap
from nnxfn.transforms.metadata import transform_metadata as transform_metadata
from nnxfn.transforms.partial import (
    JitPartial as JitPartial,
    cached_partial as cached_partial,
    jit_partial as jit_partial,
)
from nnxfn.transforms import general as general  # split_inputs/merge_inputs (Flax: nnx.transforms.general)
