"""`nnx.reprlib`: the bounded reprs nnxfn prints for graph objects and Variables."""

from nnxfn.facade.display import (
    MAX_DEPTH as MAX_DEPTH,
    MAX_ITEMS as MAX_ITEMS,
    node_repr as node_repr,
    value_repr as value_repr,
    variable_repr as variable_repr,
)
