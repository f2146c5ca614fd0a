"""`nnx.compat`: Flax's graph-mode entry points, for code written against them.

As in Flax, these are the usual functions with `graph=True` (and, for the
transforms and `split_rngs`/`fork_rngs`/`cached_partial`, `graph_updates=True`)
as defaults, so they keep graph mode's results (gradients as States, graph
updates committed) even under `nnx.set_graph_mode(False)` or
`NNX_GRAPH_MODE=false`. A flag passed explicitly still wins. `Optimizer` and
`ModelAndOptimizer` are nnxfn's classes themselves. Each name is made when
first used and kept (`nnx.compat.jit is nnx.compat.jit`).

>>> import nnxfn as nnx, jax.numpy as jnp
>>> m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
>>> with nnx.set_graph_mode(False):
...     grads = nnx.compat.grad(lambda m: m.kernel[...].sum())(m)
>>> type(grads).__name__
'State'
"""

from __future__ import annotations

import functools
import typing as tp

from nnxfn.namespaces import rnglib, top_level

_GRAPH = {"graph": True}
_BOTH = {"graph": True, "graph_updates": True}

_NAMES: dict[str, dict[str, bool]] = {
    # graph functions
    "split": _GRAPH,
    "state": _GRAPH,
    "clone": _GRAPH,
    "graphdef": _GRAPH,
    "flatten": _GRAPH,
    "iter_graph": _GRAPH,
    "recursive_map": _GRAPH,
    "cached_partial": _BOTH,
    # modules
    "view": _GRAPH,
    "view_info": _GRAPH,
    "iter_modules": _GRAPH,
    "iter_children": _GRAPH,
    # rngs
    "split_rngs": _BOTH,
    "fork_rngs": _BOTH,
    "reseed": _GRAPH,
    "backup_keys": _GRAPH,
    # transforms
    "jit": _BOTH,
    "shard_map": _BOTH,
    "grad": _BOTH,
    "value_and_grad": _BOTH,
    "custom_vjp": _BOTH,
    "vjp": _BOTH,
    "jvp": _BOTH,
    "remat": _BOTH,
    "vmap": _BOTH,
    "scan": _BOTH,
    "pmap": _BOTH,
    "while_loop": _BOTH,
    "fori_loop": _BOTH,
    "eval_shape": _BOTH,
    "cond": _BOTH,
    "switch": _BOTH,
    "checkify": _BOTH,
    # spmd
    "get_abstract_model": _GRAPH,
    # training (Flax's graph-mode optimizer is the same class)
    "Optimizer": {},
    "ModelAndOptimizer": {},
}

_MADE: dict[str, tp.Any] = {}


def __getattr__(name: str) -> tp.Any:
    flags = _NAMES.get(name)
    if flags is None:
        raise AttributeError(f"module 'nnxfn.compat' has no attribute {name!r}")
    made = _MADE.get(name)
    if made is None:
        # `backup_keys` is not in `nnx.*` (as in Flax)
        target = getattr(rnglib, name) if name == "backup_keys" else top_level(name)
        assert callable(target), name
        made = _MADE[name] = functools.partial(target, **flags) if flags else target
    return made


def __dir__() -> list[str]:
    return sorted(set(_NAMES) | set(globals()))
