"""`nnx.proxy_caller`: the recorded accessor chains behind `nnx.call` and `GraphDef.apply`."""

from nnxfn.core.calls import (
    CallableProxy as CallableProxy,
    DelayedAccessor as DelayedAccessor,
    GetAttr as GetAttr,
    GetItem as GetItem,
)
