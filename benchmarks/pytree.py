"""A Module used as a plain JAX pytree, against an Equinox module of the same structure.

The model is `blocks` blocks, each a `Linear(16, 16)` and a `LayerNorm(16)`,
in an `nnx.List` (the same code on `flax.nnx`); the Equinox twin is
`ENet(blocks=[EBlock(eqx.nn.Linear, eqx.nn.LayerNorm), ...])`, and the
baseline a dict of the same arrays. Two measurements per library, interleaved
in one process:

- roundtrip: `jax.tree_util.tree_flatten` + `tree_unflatten` of the model;
- jax.jit call: `jax.jit(lambda t, x: x)(model, x)`, i.e. what a plain
  `jax.jit` call costs on top of the computation (flatten + cache check).

The ratio is to the Equinox twin's time for the same measurement.
"""

from __future__ import annotations

import typing as tp

import jax
import jax.numpy as jnp

from benchmarks.timing import calibrate, interleaved, median

WIDTH = 16


def _define(nnx: tp.Any) -> type:
    class Block(nnx.Module):
        def __init__(self, rngs: tp.Any):
            self.lin = nnx.Linear(WIDTH, WIDTH, rngs=rngs)
            self.norm = nnx.LayerNorm(WIDTH, rngs=rngs)

    class Net(nnx.Module):
        def __init__(self, blocks: int, rngs: tp.Any):
            self.blocks = nnx.List([Block(rngs) for _ in range(blocks)])

    return Net


def _eqx_twin(blocks: int) -> tp.Any:
    import equinox as eqx

    class EBlock(eqx.Module):
        lin: eqx.nn.Linear
        norm: eqx.nn.LayerNorm

    class ENet(eqx.Module):
        blocks: list

    keys = jax.random.split(jax.random.key(0), blocks)
    return ENet([EBlock(eqx.nn.Linear(WIDTH, WIDTH, key=k), eqx.nn.LayerNorm(WIDTH)) for k in keys])


def _roundtrip(tree: tp.Any) -> tp.Callable[[], tp.Any]:
    def fn() -> tp.Any:
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        return jax.tree_util.tree_unflatten(treedef, leaves)

    return fn


def models(blocks: int, include_flax: bool = True, include_eqx: bool = True) -> dict[str, tp.Any]:
    """The same structure in each library available (and a dict of arrays)."""
    import nnxfn as nnx

    model = _define(nnx)(blocks, nnx.Rngs(0))
    out: dict[str, tp.Any] = {"nnxfn": model}
    if include_eqx:
        try:
            out["eqx"] = _eqx_twin(blocks)
        except ImportError:
            pass
    if include_flax:
        try:
            from flax import nnx as fnnx
        except ImportError:
            pass
        else:
            out["flax"] = _define(fnnx)(blocks, fnnx.Rngs(0))
    out["dict"] = {
        f"b{i}": {"k": b.lin.kernel[...], "b": b.lin.bias[...], "s": b.norm.scale[...], "o": b.norm.bias[...]}
        for i, b in enumerate(model.blocks)
    }
    return out


def run(
    blocks: int, *, reps: int, target_s: float, include_flax: bool = True, include_eqx: bool = True
) -> dict[str, tp.Any]:
    trees = models(blocks, include_flax, include_eqx)
    jitted = jax.jit(lambda tree, x: x)
    x = jnp.ones(WIDTH)
    roundtrips = {f"{name} roundtrip": _roundtrip(tree) for name, tree in trees.items()}
    calls = {f"{name} jax.jit": (lambda tree=tree: jitted(tree, x)) for name, tree in trees.items()}
    rows: dict[str, dict[str, float]] = {}
    for fns, wait in ((roundtrips, False), (calls, True)):
        for fn in fns.values():
            fn()  # warm-up (and the one trace of each jax.jit call)
        counts = {name: calibrate(fn, target_s, lo=1, hi=20_000, wait=wait) for name, fn in fns.items()}
        samples = interleaved(fns, reps, counts, block_each=False, wait=wait)
        base = "eqx" if "eqx" in trees else "dict"
        base_us = median(samples[f"{base} {next(iter(fns)).split(' ', 1)[1]}"]) * 1e6
        for name, s in samples.items():
            us = median(s) * 1e6
            rows[name] = {"us": us, "ratio": us / base_us}
    return {"blocks": blocks, "baseline": "eqx" if "eqx" in trees else "dict", "variants": rows}
