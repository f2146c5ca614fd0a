"""`nnx.graph`: the same namespace as `nnx.graphlib` (Flax keeps both names)."""

from nnxfn.namespaces.graphlib import *  # noqa: F401,F403
from nnxfn.namespaces.graphlib import (  # noqa: F401 - private names `import *` skips
    __getattr__ as __getattr__,
    _flatten_pytree as _flatten_pytree,
    _unflatten_pytree as _unflatten_pytree,
)
