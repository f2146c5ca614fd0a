"""`nnx.module`: Module and the functions that look inside module graphs."""

from nnxfn.facade.module import (
    M as M,
    Module as Module,
    first_from as first_from,
    iter_modules as iter_modules,
    tuple_init as tuple_init,
    tuple_reduce as tuple_reduce,
)
from nnxfn.facade.views import (
    capture as capture,
    iter_children as iter_children,
    iter_module_children as iter_module_children,
    view as view,
    view_info as view_info,
    with_attributes as with_attributes,
)
