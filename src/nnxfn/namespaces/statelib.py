"""`nnx.statelib`: State and the state helpers, under Flax's module name."""

from nnxfn.core.flatstate import (
    FlatState as FlatState,
    create_path_filters as create_path_filters,
    diff as diff,
    from_flat_state as from_flat_state,
    map_state as map_state,
    replace_by_pure_dict as replace_by_pure_dict,
    restore_int_paths as restore_int_paths,
    to_flat_state as to_flat_state,
    to_pure_dict as to_pure_dict,
)
from nnxfn.core.state import (
    State as State,
    filter_state as filter_state,
    merge_state as merge_state,
    split_state as split_state,
)
