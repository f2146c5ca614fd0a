"""Pickle and deepcopy JAX's wrapped functions by name.

Layers keep functions as configuration (`LSTMCell.gate_fn = nnx.sigmoid`,
`nnx.Sequential(..., nnx.relu)`). JAX's activations are `jax.jit` or
`jax.custom_jvp` objects, which `pickle` cannot store and `copy.deepcopy`
duplicates. Importing this module registers (with `copyreg`) a reduction
for those two kinds of objects: one reachable by its module and qualified
name (every module-level jitted function, e.g. `jax.nn.relu`, `jnp.tanh`)
is stored as that name, so unpickling and deepcopying give back the very
same object. Others keep JAX's own behaviour.
"""

from __future__ import annotations

import copyreg
import importlib
import typing as tp

import jax


def _lookup(module: str, qualname: str) -> object:
    obj: object = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _reduce(fn: object) -> str | tuple[tp.Any, ...]:  # as `object.__reduce_ex__`
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if isinstance(module, str) and isinstance(qualname, str) and "<" not in qualname:
        try:
            found = _lookup(module, qualname)
        except (ImportError, AttributeError):
            found = None
        if found is fn:
            return _lookup, (module, qualname)
    return object.__reduce_ex__(fn, 2)  # JAX's own (usually failing) behaviour


for _kind in {type(jax.jit(lambda x: x)), jax.custom_jvp, jax.custom_vjp}:
    copyreg.pickle(_kind, _reduce)
del _kind
