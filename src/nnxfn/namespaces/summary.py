"""`nnx.summary`: `tabulate` and its row records, under Flax's module name."""

from nnxfn.nn.summary import (
    CallInfo as CallInfo,
    filter_rng_streams as filter_rng_streams,
    tabulate as tabulate,
)
