"""`nnx.spmd`: the sharding helpers under Flax's module name."""

from nnxfn.facade.spmd import (
    PARTITION_NAME as PARTITION_NAME,
    get_named_sharding as get_named_sharding,
    get_partition_spec as get_partition_spec,
    with_partitioning as with_partitioning,
)
from nnxfn.transforms.spmd import (
    abstract_with_sharding as abstract_with_sharding,
    add_axis as add_axis,
    remove_axis as remove_axis,
    as_abstract as as_abstract,
    get_abstract_model as get_abstract_model,
    get_var_pspec as get_var_pspec,
)
