"""The pure state engine: GraphDef, State, filters, split/merge.

The public graph functions (`split`, `merge`, `state`, `update`, ...) are
defined once, in `api.py`/`writes.py`/`traverse.py`, with Flax's signatures:
`nnxfn.split is nnxfn.core.split`. What they are built on is in `graph.py`
(`flatten_graph`/`unflatten_graph`, `split_graph`/`merge_graph`) and the
records of `graphdef.py`/`state.py`. Nothing here mutates a user object
except `update`/`pop`, and nothing here knows what a Module is: object types
join the graph through `register_node_type`, boxed leaves through
`VariableLike`. Every cross-call cache is in `caches.py` (`set_caching`,
`NNXFN_CACHE=0`).
"""

from nnxfn.core.api import (
    clone as clone,
    find_duplicates as find_duplicates,
    graphdef as graphdef,
    is_graph_node as is_graph_node,
    iter_graph as iter_graph,
    merge as merge,
    pop as pop,
    recursive_map as recursive_map,
    split as split,
    state as state,
    update as update,
)
from nnxfn.core import calls as calls  # sets `GraphDef.apply`
from nnxfn.core.caches import caching as caching, set_caching as set_caching
from nnxfn.core.filters import (
    All as All,
    Any as Any,
    Everything as Everything,
    Filter as Filter,
    Not as Not,
    Nothing as Nothing,
    OfType as OfType,
    PathContains as PathContains,
    PathIn as PathIn,
    PathRegex as PathRegex,
    WithTag as WithTag,
    to_predicate as to_predicate,
)
from nnxfn.core.graph import flatten_graph as flatten_graph, unflatten_graph as unflatten_graph
from nnxfn.core.graphdef import GraphDef as GraphDef
from nnxfn.core.registry import (
    NodeImpl as NodeImpl,
    register_node_type as register_node_type,
)
from nnxfn.core.state import (
    State as State,
    filter_state as filter_state,
    merge_state as merge_state,
    split_state as split_state,
)
from nnxfn.core.variable_like import DataLeaf as DataLeaf, VariableLike as VariableLike

__all__ = [
    "All",
    "Any",
    "DataLeaf",
    "Everything",
    "Filter",
    "GraphDef",
    "NodeImpl",
    "Not",
    "Nothing",
    "OfType",
    "PathContains",
    "PathIn",
    "PathRegex",
    "State",
    "VariableLike",
    "WithTag",
    "caching",
    "clone",
    "filter_state",
    "find_duplicates",
    "flatten_graph",
    "graphdef",
    "is_graph_node",
    "iter_graph",
    "merge",
    "merge_state",
    "pop",
    "recursive_map",
    "register_node_type",
    "set_caching",
    "split",
    "split_state",
    "state",
    "to_predicate",
    "unflatten_graph",
    "update",
]
