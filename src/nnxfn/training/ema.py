"""`EMA`: an exponential moving average of a model's parameters.

Usage::

    ema = EMA(model, decay=0.999)         # copies the Param leaves
    ema.update(model)                     # ema = decay * ema + (1 - decay) * param
    eval_model = ema.apply_to(model)      # a new model with the averaged weights
    eval_model = ema.ema_model()          # same, with the rest of the state as of
                                          # the last `update`

The averages live in `EMAState` Variables (not `Param`s, so `nnx.grad` and
`nnx.Optimizer` never train them), in `ema.params`, a State with the paths
of `nnx.state(model, wrt)`. The EMA is a graph node: pass it to `nnx.jit`
and checkpoint it like a model. The model's other leaves (batch statistics,
...) are kept in `ema.rest` for `ema_model()`; `decay` and `wrt` are static.
"""

from __future__ import annotations

import typing as tp

import jax.numpy as jnp

from nnxfn.core import State, merge, split
from nnxfn.core.errors import path_str
from nnxfn.facade.module import Object, static
from nnxfn.facade.variables import Param, Variable

Path = tuple[tp.Any, ...]


class EMAState(Variable):
    """A copy of a model leaf held by `EMA` (an average, or the rest of the state)."""


class EMA(Object):
    """Exponential moving average of the `wrt` Variables of a model.

    Args:
      model: the model to average; its `wrt` leaves are copied as the start.
      decay: the weight of the old average, in [0, 1].
      wrt: a filter selecting the averaged Variables (default `Param`).
    """

    def __init__(self, model: tp.Any, decay: float = 0.999, *, wrt: tp.Any = Param):
        if not 0.0 <= float(decay) <= 1.0:
            raise ValueError(_bad_decay(decay))
        self.decay = decay
        self.wrt = static(wrt)
        graphdef, params, rest = split(model, wrt, ...)
        self.graphdef = static(graphdef)
        self.params = _boxed(params)
        self.rest = _boxed(rest)

    def update(self, model: tp.Any) -> None:
        """Fold the model's current `wrt` leaves into the averages (in place)."""
        graphdef, params, rest = split(model, self.wrt, ...)
        decay = jnp.asarray(self.decay)
        averages = dict(self.params.flat_state())
        _check_paths(averages, params, "update")
        for path, leaf in params.flat_state():
            var = averages[path]
            old = var.value
            new = decay * old + (1 - decay) * _raw(leaf)
            var.value = new.astype(old.dtype)
        kept = dict(self.rest.flat_state())
        if set(kept) == {p for p, _ in rest.flat_state()} and graphdef == self.graphdef:
            for path, leaf in rest.flat_state():
                kept[path].value = _raw(leaf)

    def apply_to(self, model: tp.Any) -> tp.Any:
        """A new model like `model` (same structure and other state) with the
        averaged weights; `model` itself is unchanged."""
        graphdef, params, rest = split(model, self.wrt, ...)
        averages = dict(self.params.flat_state())
        _check_paths(averages, params, "apply_to")
        new = State.from_flat_path(
            [(p, _with_value(leaf, averages[p].value)) for p, leaf in params.flat_state()]
        )
        return merge(graphdef, new, rest)

    def ema_model(self) -> tp.Any:
        """A new model with the averaged weights and the rest of the state
        (e.g. batch statistics) as of the last `update` (or construction)."""
        return merge(self.graphdef, _unboxed(self.params), _unboxed(self.rest))


def _raw(leaf: tp.Any) -> tp.Any:
    return leaf.raw_value if isinstance(leaf, Variable) else leaf


def _with_value(leaf: tp.Any, value: tp.Any) -> tp.Any:
    if isinstance(leaf, Variable):
        return type(leaf).from_parts(value, leaf.metadata_items())
    return value


def _boxed(state: State) -> State:
    return State.from_flat_path([(p, EMAState(_raw(v))) for p, v in state.flat_state()])


def _unboxed(state: State) -> State:
    return State.from_flat_path([(p, _raw(v)) for p, v in state.flat_state()])


def _check_paths(averages: dict[Path, tp.Any], params: State, where: str) -> None:
    have = [p for p, _ in params.flat_state()]
    missing = [p for p in have if p not in averages]
    extra = [p for p in averages if p not in set(have)]
    if missing or extra:
        raise ValueError(_paths_mismatch(where, missing, extra))


# -- error messages -----------------------------------------------------------------
def _bad_decay(decay: tp.Any) -> str:
    return (
        f"EMA: decay={decay!r} must be in [0, 1] (it is the weight of the old "
        "average; 0.999 is typical)."
    )


def _paths_mismatch(where: str, missing: list[Path], extra: list[Path]) -> str:
    lines = [f"EMA.{where}: the model's averaged Variables differ from the EMA's."]
    if missing:
        lines.append("  in the model, not in the EMA: " + ", ".join(path_str(p, "model") for p in missing))
    if extra:
        lines.append("  in the EMA, not in the model: " + ", ".join(path_str(p, "model") for p in extra))
    lines.append(
        "Pass the model (or one with the same structure) that the EMA was built "
        "from, or build a new `EMA(model)` after changing the model."
    )
    return "\n".join(lines)
