"""Checking gradients against the Variables an optimizer trains.

`Optimizer.update` calls `match_grads` before it computes or writes anything:
gradients are matched to the trained Variables by path, those outside the
optimizer's `wrt` are dropped (so freezing by `wrt` works), and every
remaining mismatch (a missing or unknown path, another shape, a dtype of
another kind) is reported at once, naming each path. Shapes and dtypes are
static, so under `nnx.jit` this runs while tracing only.
"""

from __future__ import annotations

import typing as tp
from collections.abc import Mapping

import jax
import numpy as np
from jax.typing import DTypeLike

from nnxfn.core import Filter, State, to_predicate
from nnxfn.core import state as state_of
from nnxfn.core.errors import path_str
from nnxfn.core.registry import lookup
from nnxfn.facade.variables import Variable

Path = tuple[tp.Hashable, ...]
# A State leaf: a Variable, or the raw value it holds (an array, usually).
Leaf = tp.Any


def unbox(x: Leaf) -> Leaf:
    """The array a Variable holds (read out of its `jax.Ref` for hijax/ref Variables)."""
    if isinstance(x, Variable):
        return x.get_value() if x.hijax or x.ref else x.raw_value
    return x


def flat_grads(grads: object, what: str) -> tp.Sequence[tuple[Path, Leaf]]:
    """(path, leaf) pairs of a State, a nested dict, or an object graph."""
    if isinstance(grads, State):
        return grads.flat_state()
    if isinstance(grads, Mapping):
        return State(grads).flat_state()
    if lookup(type(grads)) is not None:  # a Module-shaped gradient
        return state_of(grads).flat_state()
    raise TypeError(_bad_grads(what, grads))


def normalise(path: Path) -> Path:
    """Integer-like string keys (from a checkpoint or a pure dict) as ints."""
    return tuple(int(k) if isinstance(k, str) and k.isdigit() else k for k in path)


def match_grads(
    grads: object, params: list[tuple[Path, Leaf]], model: object, wrt: Filter, what: str
) -> State:
    """A State of raw gradient arrays with exactly the paths of `params`.

    `params` are the trained (path, Variable) pairs of `model`. A gradient
    leaf is dropped if it is a Variable that `wrt` does not select, or a raw
    array at a path of the model that is not trained. Raises, naming every
    offending path, if what is left does not fit `params`.
    """
    pred = to_predicate(wrt)
    want = {path: leaf for path, leaf in params}
    found: dict[Path, Leaf] = {}
    unknown: list[Path] = []
    dropped: list[Path] = []
    model_paths: set[Path] | None = None
    for path, leaf in flat_grads(grads, what):
        path = normalise(path)
        if path in want:
            if isinstance(leaf, Variable) and not pred(path, leaf):
                dropped.append(path)
            else:
                found[path] = unbox(leaf)
            continue
        if isinstance(leaf, Variable) and not pred(path, leaf):
            dropped.append(path)
            continue
        if model_paths is None:  # only when needed: one more walk of the model
            model_paths = {p for p, _ in state_of(model).flat_state()}
        if path in model_paths and not isinstance(leaf, Variable):
            dropped.append(path)  # a raw gradient for a Variable this optimizer does not train
        else:
            unknown.append(path)
    if not found:
        raise ValueError(_no_match(what, wrt, list(want), dropped + unknown))
    missing = [p for p in want if p not in found]
    wrong = [
        (p, found[p], unbox(want[p])) for p in want if p in found and _mismatch(found[p], unbox(want[p]))
    ]
    if missing or unknown or wrong:
        raise ValueError(_mismatch_message(what, missing, unknown, wrong))
    return State.from_flat_path([(p, found[p]) for p in want])


def _kind(dtype: DTypeLike) -> str:
    dtype = np.dtype(dtype) if not isinstance(dtype, np.dtype) else dtype
    if dtype == jax.dtypes.float0:
        return "float0"
    if jax.numpy.issubdtype(dtype, jax.numpy.complexfloating):
        return "complex"
    if jax.numpy.issubdtype(dtype, jax.numpy.floating):
        return "float"
    return str(dtype)


def _mismatch(grad: object, param: object) -> bool:
    """Another shape, or a dtype of another kind (a float32 gradient for a
    bfloat16 parameter is fine: optax casts the update to the parameter)."""
    gshape, pshape = getattr(grad, "shape", None), getattr(param, "shape", None)
    if gshape is None or pshape is None:
        return False
    if tuple(gshape) != tuple(pshape):
        return True
    gdtype, pdtype = getattr(grad, "dtype", None), getattr(param, "dtype", None)
    if gdtype is None or pdtype is None:
        return False
    return _kind(gdtype) != _kind(pdtype)


# -- error messages -----------------------------------------------------------------
def _show(paths: list[Path], limit: int = 8) -> str:
    text = ", ".join(path_str(p, "model") for p in paths[:limit])
    return text + (f", ... ({len(paths) - limit} more)" if len(paths) > limit else "")


def _spec(x: object) -> str:
    shape = ",".join(str(d) for d in getattr(x, "shape", ()))
    return f"{getattr(x, 'dtype', type(x).__name__)}[{shape}]"


def _bad_grads(what: str, grads: object) -> str:
    return (
        f"Optimizer.update: {what} must be a State (as returned by `nnx.grad`) or a "
        f"nested dict of arrays, got a {type(grads).__name__}. Compute them with "
        "`grads = nnx.grad(loss_fn)(model)`."
    )


def _no_match(what: str, wrt: Filter, trained: list[Path], got: list[Path]) -> str:
    return (
        f"Optimizer.update: none of the {what} match a Variable this optimizer trains "
        f"(wrt={wrt!r}), so nothing would be trained.\n"
        f"  trained: {_show(trained)}\n"
        f"  {what}: {_show(got) if got else '(empty)'}\n"
        "Take gradients of the model the optimizer was built for, with respect to the "
        "same Variables: `nnx.grad(loss_fn, argnums=nnx.DiffState(0, wrt))(model)`."
    )


def _mismatch_message(
    what: str, missing: list[Path], unknown: list[Path], wrong: list[tuple[Path, object, object]]
) -> str:
    lines = [
        f"Optimizer.update: {what} do not match the trained (`wrt`) Variables of the "
        "model; nothing was updated."
    ]
    if missing:
        lines.append(f"  missing from {what}: {_show(missing)}")
    if unknown:
        lines.append(f"  in {what} but not trained: {_show(unknown)}")
    for path, grad, param in wrong:
        lines.append(f"  {path_str(path, 'model')}: gradient {_spec(grad)}, parameter {_spec(param)}")
    lines.append(
        "Pass the gradients of the model this optimizer was built for, e.g. "
        "`grads = nnx.grad(loss_fn)(model)` then `optimizer.update(model, grads)`."
    )
    return "\n".join(lines)
