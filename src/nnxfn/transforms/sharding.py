"""Sharding arguments of `nnx.jit` resolved per state leaf."""

from __future__ import annotations

import typing as tp

from nnxfn import core
from nnxfn.transforms.boundary import Entry


class StateSharding:
    """Per-filter shardings for a module argument: `StateSharding({nnx.Param: s, ...: None})`."""

    def __init__(self, mapping: tp.Mapping[tp.Any, tp.Any]):
        self.mapping = tuple(mapping.items())
        self._preds = tuple((core.to_predicate(f), s) for f, s in self.mapping)

    def resolve(self, path: tuple, leaf: tp.Any) -> tp.Any:
        for pred, sharding in self._preds:
            if pred(path, leaf):
                return sharding
        return None


def _for_arg(spec: tp.Any, arg: int) -> tp.Any:
    if isinstance(spec, (tuple, list)):
        return spec[arg] if 0 <= arg < len(spec) else None
    return spec


def resolve_in_shardings(spec: tp.Any, entry: Entry, state_owner: list[int],
                         other_owner: list[int], donated_idx: tuple[int, ...]) -> tuple:
    """Shardings shaped like the jitted body's (kept, donated, others) arguments."""
    per_state = []
    for path, leaf, owner in zip(entry.static.paths, entry.live, state_owner):
        s = _for_arg(spec, owner) if spec is not None else None
        per_state.append(s.resolve(path[1:], leaf) if isinstance(s, StateSharding) else s)
    chosen = set(donated_idx)
    kept = [s for i, s in enumerate(per_state) if i not in chosen]
    donated = [per_state[i] for i in donated_idx]
    others = [_for_arg(spec, o) if spec is not None else None for o in other_owner]
    return (kept, donated, others)


def resolve_out_shardings(spec: tp.Any) -> tp.Any:
    """Shardings for (exit static, user outputs, emitted state): only user outputs."""
    return (None, spec, None) if spec is not None else None
