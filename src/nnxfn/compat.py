"""`nnx.compat`: Flax's namespace of graph-mode defaults.

In Flax, `nnx.compat.jit`, `nnx.compat.split`, ... are the same functions as
`nnx.jit`, `nnx.split`, ... with `graph=True, graph_updates=True` as defaults.
nnxfn always behaves that way, so here they are simply the same functions.
"""

from nnxfn import (
    cached_partial as cached_partial,
    checkify as checkify,
    clone as clone,
    cond as cond,
    custom_vjp as custom_vjp,
    eval_shape as eval_shape,
    flatten as flatten,
    fori_loop as fori_loop,
    fork_rngs as fork_rngs,
    get_abstract_model as get_abstract_model,
    grad as grad,
    graphdef as graphdef,
    iter_graph as iter_graph,
    iter_modules as iter_modules,
    jit as jit,
    jvp as jvp,
    pmap as pmap,
    recursive_map as recursive_map,
    remat as remat,
    reseed as reseed,
    scan as scan,
    shard_map as shard_map,
    split as split,
    split_rngs as split_rngs,
    state as state,
    switch as switch,
    value_and_grad as value_and_grad,
    view as view,
    vjp as vjp,
    vmap as vmap,
    while_loop as while_loop,
)


def __getattr__(name: str) -> object:
    """Any other public nnxfn name is its own compat version (one behaviour)."""
    import nnxfn

    if name.startswith("_"):
        raise AttributeError(name)
    try:
        return getattr(nnxfn, name)
    except AttributeError:
        raise AttributeError(f"module 'nnxfn.compat' has no attribute {name!r}") from None
