"""Interoperability with Equinox and other JAX pytree libraries.

Importing this package registers the rule that boxes the arrays of foreign
pytrees (Equinox modules kept as Module attributes) in States: inexact
arrays are `Param`, arrays inside `eqx.nn.State` are `BatchStat`, other
arrays are `ForeignState`. See `classify.py`, `view.py`, `filters.py`.
"""

from nnxfn.interop.classify import (
    ForeignState as ForeignState,
    classify as classify,
    default_leaf_type as default_leaf_type,
    install_classifier,
    leaf_types as leaf_types,
    register_leaf_type as register_leaf_type,
)
from nnxfn.interop.equinox import load_equinox as load_equinox
from nnxfn.interop.filters import from_predicate as from_predicate
from nnxfn.interop.view import (
    PytreeView as PytreeView,
    as_pytree as as_pytree,
    from_pytree as from_pytree,
)
from nnxfn.core import update as update  # also takes a `PytreeView` (registered by `view.py`)

install_classifier()
