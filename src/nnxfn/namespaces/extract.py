"""`nnx.extract`: pure NodeStates trees and prefixes, under Flax's module name."""

from nnxfn.core.trees import (
    NodeStates as NodeStates,
    TreeState as TreeState,
    broadcast_prefix as broadcast_prefix,
    check_consistent_aliasing as check_consistent_aliasing,
    clear_non_graph_nodes as clear_non_graph_nodes,
    default_split_fn as default_split_fn,
    from_tree as from_tree,
    is_tree_node as is_tree_node,
    merge_tree_node as merge_tree_node,
    prefix as prefix,
    to_tree as to_tree,
)
from nnxfn.transforms.common import PrefixMapping as PrefixMapping
