"""`nnx.rnglib`: the random-stream names under Flax's module name."""

from nnxfn.core import All as _All, Not as _Not
from nnxfn.facade.rngs import (
    KeylessInitializer as KeylessInitializer,
    RngStream as RngStream,
    Rngs as Rngs,
    reseed as reseed,
)
from nnxfn.facade.variables import RngCount as RngCount, RngKey as RngKey, RngState as RngState
from nnxfn.transforms.rngs import (
    SplitBackups as SplitBackups,
    backup_keys as backup_keys,
    fork_rngs as fork_rngs,
    restore_rngs as restore_rngs,
    split_rngs as split_rngs,
    with_rngs as with_rngs,
)

#: Filter for the random state that is not a key (the counters).
NotKey = _All(RngState, _Not(RngKey))
