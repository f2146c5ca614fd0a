"""nnxfn: NNX-style neural networks for JAX on a pure functional core.

Use it as `import nnxfn as nnx` or `from nnxfn import nnx`.
"""

from nnxfn.core import (
    All as All,
    caching as caching,
    set_caching as set_caching,
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
    filter_state as filter_state,
    merge_state as merge_state,
    split_state as split_state,
)
from nnxfn.facade.containers import Dict as Dict, List as List, Sequential as Sequential
from nnxfn.facade.module import (
    Module as Module,
    Pytree as Pytree,
    check_pytree as check_pytree,
    data as data,
    iter_modules as iter_modules,
    static as static,
)
from nnxfn.facade.views import capture as capture, view as view
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

# -- pytreeapi --
from nnxfn.facade.module import NonPytreeObject as Object  # Flax's `nnx.Object`: pytree=False
from nnxfn.facade.pytreelib import (
    Data as Data,
    Static as Static,
    dataclass as dataclass,
    has_data as has_data,
    is_data as is_data,
    register_data_type as register_data_type,
)
from nnxfn.facade.variables import (
    A as A,
    register_variable_name as register_variable_name,
    variable_name_from_type as variable_name_from_type,
    variable_type_from_name as variable_type_from_name,
)
from nnxfn.facade.varmodes import var_defaults as var_defaults
from nnxfn.facade.views import (
    iter_children as iter_children,
    iter_module_children as iter_module_children,
    set_metadata as set_metadata,
    vars_as as vars_as,
    view_info as view_info,
    with_attributes as with_attributes,
    with_vars as with_vars,
)
from nnxfn.facade.module import M as M

# -- flags --
from nnxfn.core.modes import set_graph_mode as set_graph_mode, set_graph_updates as set_graph_updates
from nnxfn.transforms import (
    JitPartial as JitPartial,
    cached_partial as cached_partial,
    jit_partial as jit_partial,
    transform_metadata as transform_metadata,
)
# -- end flags --

# -- silent --
from nnxfn.core import PathRegex as PathRegex
from nnxfn.core.unmatched import UnmatchedFilterWarning as UnmatchedFilterWarning
from nnxfn.transforms.retrace import (
    RetraceWarning as RetraceWarning,
    set_retrace_warnings as set_retrace_warnings,
)
from nnxfn.training import checkpoint_steps as checkpoint_steps

# -- graphapi --
# The graph/state API with Flax's signatures (they accept `graph=`/`graph_updates=`,
# leaf roots, GraphState, FlatState, pure dicts): the same objects as `nnxfn.core`'s.
from nnxfn.core import (  # noqa: E402
    clone as clone,
    find_duplicates as find_duplicates,
    graphdef as graphdef,
    iter_graph as iter_graph,
    merge as merge,
    pop as pop,
    recursive_map as recursive_map,
    split as split,
    state as state,
    update as update,  # also takes `nnx.as_pytree` views (registered by `interop`)
)
from nnxfn.core.api import (  # noqa: E402
    GraphState as GraphState,
    PureState as PureState,
    as_pure as as_pure,
    map as map,
    pure as pure,
    unpack as unpack,
)
from nnxfn.core.api import state as variables  # noqa: E402
from nnxfn.core.calls import call as call  # noqa: E402
from nnxfn.core.contexts import (  # noqa: E402
    MergeContext as MergeContext,
    SplitContext as SplitContext,
    UpdateContext as UpdateContext,
    current_update_context as current_update_context,
    flatten as flatten,
    merge_context as merge_context,
    split_context as split_context,
    unflatten as unflatten,
    update_context as update_context,
)
from nnxfn.core.flatstate import (  # noqa: E402
    FlatState as FlatState,
    from_flat_state as from_flat_state,
    map_state as map_state,
    replace_by_pure_dict as replace_by_pure_dict,
    restore_int_paths as restore_int_paths,
    to_flat_state as to_flat_state,
    to_pure_dict as to_pure_dict,
)
from nnxfn.core.trees import (  # noqa: E402
    NodeStates as NodeStates,
    from_tree as from_tree,
    prefix as prefix,
    to_tree as to_tree,
)

from nnxfn import nnx as nnx  # noqa: E402  (`from nnxfn import nnx`)

__version__ = "0.1.0"

# -- layers --
from nnxfn.transforms.rngs import (  # noqa: E402
    restore_rngs as restore_rngs,
    with_rngs as with_rngs,
)
from nnxfn.nn.initializers import Initializer as Initializer  # noqa: E402
from nnxfn.facade.spmd import (  # noqa: E402
    use_eager_sharding as use_eager_sharding,
    using_eager_sharding as using_eager_sharding,
)
from nnxfn.transforms.spmd import (  # noqa: E402
    abstract_with_sharding as abstract_with_sharding,
    as_abstract as as_abstract,
)

# -- optim --
from nnxfn.training import optimizer as optimizer  # noqa: E402
from nnxfn.training.metrics import Metric as Metric, MultiMetric as MultiMetric  # noqa: E402
from nnxfn.training.optimizer import OptVariable as OptVariable  # noqa: E402
from nnxfn.training.train_state import TrainState as TrainState  # noqa: E402

# -- engine --
from nnxfn.facade.context import TraceContextError as TraceContextError  # noqa: E402

# -- Flax's module paths: nnxfn/namespaces/, installed as nnxfn.<path> --
import sys as _sys  # noqa: E402

from nnxfn import namespaces as _namespaces  # noqa: E402
from nnxfn.namespaces import (  # noqa: E402
    compat as compat,
    deprecations as deprecations,
    extract as extract,
    filterlib as filterlib,
    graph as graph,
    graphlib as graphlib,
    helpers as helpers,
    ids as ids,
    module as module,
    proxy_caller as proxy_caller,
    pytreelib as pytreelib,
    reprlib as reprlib,
    rnglib as rnglib,
    spmd as spmd,
    statelib as statelib,
    summary as summary,
    tracers as tracers,
    traversals as traversals,
    variablelib as variablelib,
    visualization as visualization,
)
from nnxfn.namespaces import pytreelib as object  # noqa: E402,A001  (Flax: `nnx.object` is pytreelib)
from nnxfn.namespaces.visualization import display as display  # noqa: E402

_namespaces.install_flax_paths(_sys.modules[__name__])


def __getattr__(name: str):
    # Flax 0.12 still answers `nnx.VariableState` (the pre-0.11 name) with a
    # DeprecationWarning, without listing it in `dir(nnx)`.
    if name == "VariableState":
        import warnings

        warnings.warn(
            "'VariableState' was removed in Flax 0.11; it is an alias of 'Variable': use 'Variable'.",
            DeprecationWarning,
            stacklevel=2,
        )
        return Variable
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
