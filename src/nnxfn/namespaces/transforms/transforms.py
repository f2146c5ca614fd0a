"""`nnx.transforms.transforms`: `eval_shape`, `cond`/`switch`, `checkify`, `make_jaxpr`."""

from nnxfn.transforms.control_flow import cond as cond, switch as switch
from nnxfn.transforms.misc import (
    checkify as checkify,
    eval_shape as eval_shape,
    make_jaxpr as make_jaxpr,
)
