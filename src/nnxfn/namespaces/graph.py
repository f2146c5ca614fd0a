"""`nnx.graph`: the same namespace as `nnx.graphlib` (Flax keeps both names)."""

from nnxfn.core.pytrees import (  # noqa: F401 - private names `import *` skips (Flax's graph module has them)
    flatten_pytree as _flatten_pytree,
    unflatten_pytree as _unflatten_pytree,
)
from nnxfn.namespaces.graphlib import *  # noqa: F401,F403
from nnxfn.namespaces.graphlib import __getattr__ as __getattr__  # noqa: F401
