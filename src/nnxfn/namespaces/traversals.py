"""`nnx.traversals`: flattening nested mappings, under Flax's module name."""

from nnxfn.core.traversals import (
    empty_node as empty_node,
    flatten_mapping as flatten_mapping,
    flatten_to_sequence as flatten_to_sequence,
    unflatten_mapping as unflatten_mapping,
)
