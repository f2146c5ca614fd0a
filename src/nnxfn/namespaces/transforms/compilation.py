"""`nnx.transforms.compilation`: `jit`, `jit_partial`, `shard_map` and their staged forms.

Flax has a second set of classes for its tree mode (`Simple*`); nnxfn has one
implementation, so those names are the same classes (`nnx.jit(f, graph=False)`
returns a `JitWrapped` too).
"""

from nnxfn.transforms.jit import (
    Compiled as Compiled,
    JitWrapped as JitWrapped,
    Lowered as Lowered,
    Stage as Stage,
    Traced as Traced,
    jit as jit,
)
from nnxfn.transforms.misc import shard_map as shard_map
from nnxfn.transforms.partial import JitPartial as JitPartial, jit_partial as jit_partial
from nnxfn.transforms.sharding import StateSharding as StateSharding

SimpleJitWrapped = JitWrapped
SimpleJitPartialWrapped = JitPartial
SimpleTraced = SimplePartialTraced = Traced
SimpleLowered = SimplePartialLowered = Lowered
SimpleCompiled = SimplePartialCompiled = Compiled
