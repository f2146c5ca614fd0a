"""`EMA`: an exponential moving average of a model's Variables.

Usage::

    ema = EMA(model, decay=0.999)         # copies the Variables (only=... : all)
    ema.update(model)                     # ema = decay * ema + (1 - decay) * value
    eval_model = ema.apply_to(model)      # a model that uses the averages

`ema.params` is a State of copies of the tracked Variables (same types and
metadata, e.g. sharding), the layout of Flax's `nnx.EMA`. `apply_to` returns
a new model whose tracked Variables *are* those in `ema.params` (so it sees
every later `update`) and whose other Variables are the model's own. The EMA
is a graph node: pass it to `nnx.jit` and checkpoint it like a model.

Floating-point Variables are averaged; others (integer counters, PRNG keys)
cannot be, so they are copied from the model at each `update`.
"""

from __future__ import annotations

import typing as tp

import jax.numpy as jnp

from nnxfn import core
from nnxfn.core import Filter, State
from nnxfn.core.errors import path_str
from nnxfn.facade.module import Object, data, static
from nnxfn.facade.variables import Variable
from nnxfn.training.grads import Leaf, Path

A = tp.TypeVar("A")


class EMAState(Variable):
    """Kept for code written against earlier nnxfn; `EMA` now keeps the tracked
    Variables' own types (as Flax does)."""


class EMA(Object):
    """Exponential moving average of the Variables of a model selected by `only`.

    Args:
      params: the model (or any graph / State) whose Variables are averaged.
      decay: the weight of the old average, in [0, 1].
      only: a filter selecting the tracked Variables (default: all).
      graph: Flax's mode flag, kept as `self.graph`; nnxfn has one behaviour.
    """

    def __init__(
        self,
        params: object,
        decay: float,
        *,
        only: Filter = ...,
        graph: bool | None = None,
    ):
        if not 0.0 <= float(decay) <= 1.0:
            raise ValueError(_bad_decay(decay))
        self.decay = decay
        self.filter = static(only)
        self.graph = graph  # Flax's mode flag, kept as given (it selects no result)
        tracked = _tracked(params, only)
        self.params = data(State.from_flat_path([(p, _copy(p, v)) for p, v in tracked.flat_state()]))

    def update(self, updates: object) -> None:
        """Fold the current values of the tracked Variables of `updates` (a model
        like the one given at construction) into the averages, in place."""
        averages = dict(self.params.flat_state())
        new = dict(_tracked(updates, self.filter).flat_state())
        _check_paths(averages, new, "update")
        decay = self.decay
        for path, var in averages.items():
            value = _raw(new[path])
            old = var.raw_value
            if _averaged(old):
                var.value = jnp.asarray(decay * old + (1.0 - decay) * value).astype(old.dtype)
            else:
                var.value = value

    def apply_to(self, model: A) -> A:
        """A new model like `model` whose tracked Variables are the EMA's (shared
        with `self.params`) and whose other Variables are `model`'s own."""
        graphdef, pairs = core.flatten_graph(model, copy=False)
        averages = dict(self.params.flat_state())
        tracked = {p for p, _ in _tracked(model, self.filter).flat_state()}
        _check_paths(averages, dict.fromkeys(tracked), "apply_to")
        leaves = {p: averages[p] if p in averages else leaf for p, leaf in pairs}
        return core.unflatten_graph(graphdef, leaves, copy=False)


def _tracked(node: object, only: Filter) -> State:
    found = core.state(node, only)
    for path, leaf in found.flat_state():
        if not isinstance(leaf, Variable):
            raise TypeError(_not_a_variable(path, leaf))
    return found


def _raw(leaf: Leaf) -> Leaf:
    return leaf.raw_value if isinstance(leaf, Variable) else leaf


def _copy(path: Path, leaf: Variable) -> Variable:
    return type(leaf).from_parts(jnp.copy(leaf.raw_value), leaf.metadata_items())


def _averaged(value: object) -> bool:
    dtype = getattr(value, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jnp.inexact)


def _check_paths(averages: dict[Path, Variable], model: dict[Path, object], where: str) -> None:
    missing = [p for p in model if p not in averages]
    extra = [p for p in averages if p not in model]
    if missing or extra:
        raise ValueError(_paths_mismatch(where, missing, extra))


# -- error messages -----------------------------------------------------------------
def _bad_decay(decay: object) -> str:
    return f"EMA: decay={decay!r} must be in [0, 1] (it is the weight of the old average; 0.999 is typical)."


def _not_a_variable(path: Path, leaf: object) -> str:
    return (
        f"EMA: {path_str(path, 'model')} is a {type(leaf).__name__}, not a Variable; "
        "the EMA only tracks Variables. Select Variables with `only=`, e.g. "
        "`nnx.EMA(model, decay, only=nnx.Param)`."
    )


def _paths_mismatch(where: str, missing: list[Path], extra: list[Path]) -> str:
    lines = [f"EMA.{where}: the model's tracked Variables differ from the EMA's."]
    if missing:
        lines.append("  in the model, not in the EMA: " + ", ".join(path_str(p, "model") for p in missing))
    if extra:
        lines.append("  in the EMA, not in the model: " + ", ".join(path_str(p, "model") for p in extra))
    lines.append(
        "Pass the model (or one with the same structure) that the EMA was built "
        "from, or build a new `EMA(model, decay)` after changing the model."
    )
    return "\n".join(lines)
