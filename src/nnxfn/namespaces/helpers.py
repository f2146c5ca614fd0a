"""`nnx.helpers`: the containers and the functional `TrainState`, under Flax's module name."""

from __future__ import annotations

import inspect
import typing as tp

from nnxfn.facade.containers import Dict as Dict, List as List, Sequential as Sequential
from nnxfn.training.train_state import TrainState as TrainState


def has_keyword_arg(func: tp.Callable[..., tp.Any], name: str) -> bool:
    """True if `func` takes an argument `name` that can be passed by keyword."""
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return any(p.name == name and p.kind in kinds for p in inspect.signature(func).parameters.values())
