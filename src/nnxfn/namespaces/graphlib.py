"""`nnx.graphlib`: the graph-level API under the module name Flax uses.

A thin namespace: every name is nnxfn's own implementation (see `core/`).
Any other `nnxfn` name is reachable here too (`nnx.graphlib.Variable`), as
Flax code sometimes expects.
"""

from __future__ import annotations

import typing as _tp

from nnxfn.core.api import (
    GraphState as GraphState,
    PureState as PureState,
    as_pure as as_pure,
    clone as clone,
    find_duplicates as find_duplicates,
    graph_pop as graph_pop,
    graphdef as graphdef,
    is_graph_node as is_graph_node,
    iter_graph as iter_graph,
    map as map,
    merge as merge,
    pop as pop,
    pure as pure,
    recursive_map as recursive_map,
    split as split,
    state as state,
    unpack as unpack,
    update as update,
)
from nnxfn.facade.views import (
    iter_children as iter_children,
    iter_module_children as iter_module_children,
    set_metadata as set_metadata,
)
from nnxfn.core.calls import CallableProxy as CallableProxy, call as call
from nnxfn.core.contexts import (
    IndexMap as IndexMap,
    MergeContext as MergeContext,
    RefMap as RefMap,
    SplitContext as SplitContext,
    UpdateContext as UpdateContext,
    current_update_context as current_update_context,
    flatten as flatten,
    merge_context as merge_context,
    split_context as split_context,
    unflatten as unflatten,
    update_context as update_context,
)
from nnxfn.core.flatstate import FlatState as FlatState
from nnxfn.core.refoutputs import (
    NO_UPDATE as NO_UPDATE,
    REPEATED as REPEATED,
    ArrayRefOutput as ArrayRefOutput,
    NoUpdate as NoUpdate,
    Repeated as Repeated,
)
from nnxfn.core.graphdef import GraphDef as GraphDef, NodeDef as NodeDef, VariableDef as VariableDef
from nnxfn.core.pytrees import (
    NodeRef as NodeRef,
    TreeNodeDef as TreeNodeDef,
    flatten_pytree as _flatten_pytree,
    is_node as is_node,
    is_node_leaf as is_node_leaf,
    is_node_type as is_node_type,
    is_pytree_node as is_pytree_node,
    jax_to_nnx_path as jax_to_nnx_path,
    register_graph_node_type as register_graph_node_type,
    unflatten_pytree as _unflatten_pytree,
)
from nnxfn.core.state import State as State
from nnxfn.namespaces import top_level
from nnxfn.transforms.common import Static as Static

variables = state


def __getattr__(name: str) -> _tp.Any:
    try:
        return top_level(name)
    except AttributeError:
        raise AttributeError(f"module 'nnxfn.graphlib' has no attribute {name!r}") from None
