"""`nnx.filterlib`: filters and `to_predicate`, under Flax's module name."""

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
    Predicate as Predicate,
    WithTag as WithTag,
    filters_to_predicates as filters_to_predicates,
    to_predicate as to_predicate,
)
