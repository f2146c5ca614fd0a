"""The pure state engine: GraphDef, State, filters, flatten/unflatten.

Nothing here mutates a user object except `update`/`pop` (the facade's
writes), and nothing here knows what a Module is: object types join the graph
through `register_node_type`, boxed leaves through `VariableLike`.
"""

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
from nnxfn.core.graph import (
    clone as clone,
    find_duplicates as find_duplicates,
    flatten as flatten,
    graphdef as graphdef,
    iter_graph as iter_graph,
    merge as merge,
    pop as pop,
    recursive_map as recursive_map,
    split as split,
    state as state,
    unflatten as unflatten,
    update as update,
)
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
