"""nnxfn: NNX-style neural networks for JAX on a pure functional core.

Use it as `import nnxfn as nnx` or `from nnxfn import nnx`.
"""

from nnxfn.core import (
    All as All,
    Any as Any,
    Everything as Everything,
    GraphDef as GraphDef,
    Not as Not,
    Nothing as Nothing,
    OfType as OfType,
    PathContains as PathContains,
    PathIn as PathIn,
    State as State,
    WithTag as WithTag,
    clone as clone,
    filter_state as filter_state,
    find_duplicates as find_duplicates,
    flatten as flatten,
    graphdef as graphdef,
    iter_graph as iter_graph,
    merge as merge,
    merge_state as merge_state,
    pop as pop,
    recursive_map as recursive_map,
    split as split,
    split_state as split_state,
    state as state,
    unflatten as unflatten,
)
from nnxfn.facade.containers import Dict as Dict, List as List, Sequential as Sequential
from nnxfn.facade.module import (
    capture as capture,
    Module as Module,
    Object as Object,
    Pytree as Pytree,
    data as data,
    iter_modules as iter_modules,
    static as static,
    view as view,
)
from nnxfn.facade.rngs import RngStream as RngStream, Rngs as Rngs, reseed as reseed
from nnxfn.facade.variables import (
    BatchStat as BatchStat,
    Cache as Cache,
    Intermediate as Intermediate,
    OptArray as OptArray,
    OptState as OptState,
    Param as Param,
    Perturbation as Perturbation,
    RngCount as RngCount,
    RngKey as RngKey,
    RngState as RngState,
    Variable as Variable,
)
from nnxfn.transforms import (
    Carry as Carry,
    DiffState as DiffState,
    JitWrapped as JitWrapped,
    StateAxes as StateAxes,
    StateSharding as StateSharding,
    checkify as checkify,
    checkpoint as checkpoint,
    cond as cond,
    custom_vjp as custom_vjp,
    eval_shape as eval_shape,
    fori_loop as fori_loop,
    fork_rngs as fork_rngs,
    grad as grad,
    jit as jit,
    jvp as jvp,
    make_jaxpr as make_jaxpr,
    pmap as pmap,
    remat as remat,
    scan as scan,
    shard_map as shard_map,
    split_rngs as split_rngs,
    switch as switch,
    value_and_grad as value_and_grad,
    vjp as vjp,
    vmap as vmap,
    while_loop as while_loop,
)
from nnxfn import nn as nn
from nnxfn.nn import *  # noqa: F401,F403  (layers, activations, ...; see nnxfn.nn.__all__)
from nnxfn.nn import initializers as initializers
from nnxfn.training import (
    EMA as EMA,
    ModelAndOptimizer as ModelAndOptimizer,
    Optimizer as Optimizer,
    metrics as metrics,
    restore_checkpoint as restore_checkpoint,
    save_checkpoint as save_checkpoint,
)
from nnxfn import interop as interop
from nnxfn.interop import (
    ForeignState as ForeignState,
    as_pytree as as_pytree,
    from_predicate as from_predicate,
    from_pytree as from_pytree,
    update as update,  # accepts `nnx.as_pytree` views; else `nnxfn.core.update`
)
from nnxfn.facade.spmd import (  # sharding metadata (SPMD)
    PARTITION_NAME as PARTITION_NAME,
    VariableMetadata as VariableMetadata,
    get_logical_axis_rules as get_logical_axis_rules,
    get_named_sharding as get_named_sharding,
    get_partition_spec as get_partition_spec,
    logical_axis_rules as logical_axis_rules,
    set_logical_axis_rules as set_logical_axis_rules,
    with_metadata as with_metadata,
    with_partitioning as with_partitioning,
)
from nnxfn.transforms.spmd import get_abstract_model as get_abstract_model
from nnxfn import nnx as nnx  # noqa: E402  (`from nnxfn import nnx`)

__version__ = "0.1.0"

# -- optim --
from nnxfn import compat as compat  # noqa: E402
from nnxfn import helpers as helpers  # noqa: E402
from nnxfn.training import optimizer as optimizer  # noqa: E402
from nnxfn.training.metrics import Metric as Metric, MultiMetric as MultiMetric  # noqa: E402
from nnxfn.training.optimizer import OptVariable as OptVariable  # noqa: E402
from nnxfn.training.train_state import TrainState as TrainState  # noqa: E402
