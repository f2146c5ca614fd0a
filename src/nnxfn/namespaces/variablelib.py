"""`nnx.variablelib`: Variable types, their modes (`hijax`, `ref`) and names."""

from nnxfn.facade.spmd import (
    VariableMetadata as VariableMetadata,
    use_eager_sharding as use_eager_sharding,
    using_eager_sharding as using_eager_sharding,
    with_metadata as with_metadata,
)
from nnxfn.facade.variables import (
    A as A,
    BatchStat as BatchStat,
    Cache as Cache,
    HijaxVariable as HijaxVariable,
    Intermediate as Intermediate,
    Param as Param,
    Perturbation as Perturbation,
    RefVariable as RefVariable,
    Variable as Variable,
    register_variable_name as register_variable_name,
    variable_name_from_type as variable_name_from_type,
    variable_type_from_name as variable_type_from_name,
)
from nnxfn.facade.varmodes import (
    VarDefaults as VarDefaults,
    VarDefaultsContext as VarDefaultsContext,
    is_ref as is_array_ref,
    var_defaults as var_defaults,
)

VariableState = Variable
