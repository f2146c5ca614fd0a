"""Use one-argument predicates (Equinox style) as nnxfn filters."""

from __future__ import annotations

import dataclasses
import typing as tp

from nnxfn.core.variable_like import VariableLike


@dataclasses.dataclass(frozen=True)
class from_predicate:  # noqa: N801 - reads as a function
    """A filter that matches the leaves for which `pred(array)` is true.

    Variables are unboxed first, so Equinox predicates work as they do on
    Equinox modules:

    >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> params, rest = nnx.state(model, nnx.from_predicate(eqx.is_inexact_array), ...)
    >>> sorted(params), len(rest)
    (['bias', 'kernel'], 0)
    """

    pred: tp.Callable[[object], object]

    def __call__(self, path: tuple[tp.Hashable, ...], value: object) -> bool:
        if isinstance(value, VariableLike):
            value = value.raw_value
        return bool(self.pred(value))
