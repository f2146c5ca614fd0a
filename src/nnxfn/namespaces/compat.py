"""`nnx.compat`: Flax's graph-mode entry points, for code written against them.

In Flax these are the usual functions with `graph=True, graph_updates=True`
as defaults. nnxfn has one behaviour, Flax's graph mode with graph updates,
so every name here is the same object as `nnx.<name>` (`nnx.rnglib.<name>` for
`backup_keys`), looked up when first used, so `nnx.compat.split is nnx.split`.
"""

from __future__ import annotations

import typing as tp

_NAMES = (
    # graph functions
    "split",
    "state",
    "clone",
    "graphdef",
    "flatten",
    "iter_graph",
    "recursive_map",
    "cached_partial",
    # modules
    "view",
    "view_info",
    "iter_modules",
    "iter_children",
    # rngs
    "split_rngs",
    "fork_rngs",
    "reseed",
    "backup_keys",
    # transforms
    "jit",
    "shard_map",
    "grad",
    "value_and_grad",
    "custom_vjp",
    "vjp",
    "jvp",
    "remat",
    "vmap",
    "scan",
    "pmap",
    "while_loop",
    "fori_loop",
    "eval_shape",
    "cond",
    "switch",
    "checkify",
    # spmd
    "get_abstract_model",
    # training (Flax's graph-mode optimizer is the same class)
    "Optimizer",
    "ModelAndOptimizer",
)


def __getattr__(name: str) -> tp.Any:
    if name in _NAMES:
        import nnxfn

        return getattr(nnxfn, name) if hasattr(nnxfn, name) else getattr(nnxfn.rnglib, name)
    raise AttributeError(f"module 'nnxfn.compat' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(_NAMES) | set(globals()))
