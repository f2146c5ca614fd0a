"""`nnx.pytreelib` (also `nnx.object`): Pytree/Object and data/static marking."""

from nnxfn.facade.module import NonPytreeObject as Object, Pytree as Pytree, check_pytree as check_pytree
from nnxfn.facade.pytreelib import (
    DATA_TYPES as DATA_REGISTRY,
    Data as Data,
    DataAnnotation as DataAnnotation,
    Static as Static,
    StaticAnnotation as StaticAnnotation,
    data as data,
    dataclass as dataclass,
    has_data as has_data,
    is_data as is_data,
    register_data_type as register_data_type,
    static as static,
)

__all__ = [
    "DATA_REGISTRY",
    "Data",
    "DataAnnotation",
    "Object",
    "Pytree",
    "Static",
    "StaticAnnotation",
    "check_pytree",
    "data",
    "dataclass",
    "has_data",
    "is_data",
    "register_data_type",
    "static",
]
