"""`split` + `merge` of a Module with N Variables vs `jax.tree_util` on the same leaves.

The model is `N / 2` small sub-modules, each holding two Params (`kernel`,
`bias`; tiny arrays, so only the Python work is measured). The baseline is
`jax.tree_util.tree_flatten` + `tree_unflatten` of the matching pytree
`[{"kernel": a, "bias": b}, ...]` holding the same arrays.
"""

from __future__ import annotations

import typing as tp

import jax
import jax.numpy as jnp

from benchmarks.timing import calibrate, interleaved, median


def _define(nnx: tp.Any) -> type:
    class Pair(nnx.Module):
        def __init__(self, kernel: jax.Array, bias: jax.Array):
            self.kernel = nnx.Param(kernel)
            self.bias = nnx.Param(bias)

    class Stack(nnx.Module):
        def __init__(self, n_pairs: int):
            k, b = jnp.zeros((2, 2)), jnp.zeros((2,))
            self.layers = nnx.List([Pair(k, b) for _ in range(n_pairs)])

    return Stack


def functions(n_variables: int, include_flax: bool = True) -> dict[str, tp.Callable[[], tp.Any]]:
    import nnxfn as nnx
    from nnxfn.core import caches

    n_pairs = max(1, n_variables // 2)
    model = _define(nnx)(n_pairs)
    tree = [{"kernel": p.kernel.value, "bias": p.bias.value} for p in model.layers]

    def raw():
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        return jax.tree_util.tree_unflatten(treedef, leaves)

    def nnxfn_split_merge():
        graphdef, state = nnx.split(model)
        return nnx.merge(graphdef, state)

    graphdef, state = nnx.split(model)

    def nnxfn_split():
        return nnx.split(model)

    def nnxfn_merge():
        return nnx.merge(graphdef, state)

    def nnxfn_split_merge_walked():
        # What split costs after any structural change: a fresh walk, not the cache.
        caches.STRUCTURE.tick()
        graphdef, state = nnx.split(model)
        return nnx.merge(graphdef, state)

    def nnxfn_as_pytree():
        leaves, treedef = jax.tree_util.tree_flatten(model)
        return jax.tree_util.tree_unflatten(treedef, leaves)

    fns = {
        "jax.tree_util": raw,
        "nnxfn split+merge": nnxfn_split_merge,
        "nnxfn split (walked)+merge": nnxfn_split_merge_walked,
        "nnxfn split": nnxfn_split,
        "nnxfn merge": nnxfn_merge,
        "nnxfn Module as pytree": nnxfn_as_pytree,
    }
    if include_flax:
        try:
            from flax import nnx as fnnx
        except ImportError:
            pass
        else:
            fmodel = _define(fnnx)(n_pairs)

            def flax_split_merge():
                graphdef, state = fnnx.split(fmodel)
                return fnnx.merge(graphdef, state)

            fns["flax split+merge"] = flax_split_merge
    return fns


def run(n_variables: int, *, reps: int, target_s: float, include_flax: bool = True) -> dict[str, tp.Any]:
    fns = functions(n_variables, include_flax)
    for fn in fns.values():
        fn()  # warm-up
    # No device work is started: waiting for the results would time a pytree
    # flatten of the returned Module, not split/merge.
    calls = {name: calibrate(fn, target_s, lo=1, hi=20_000, wait=False) for name, fn in fns.items()}
    samples = interleaved(fns, reps, calls, block_each=False, wait=False)
    rows = {name: {"us": median(s) * 1e6} for name, s in samples.items()}
    for row in rows.values():
        row["ratio"] = row["us"] / rows["jax.tree_util"]["us"]
    return {"n_variables": n_variables, "variants": rows}
