"""How arrays inside foreign pytrees (Equinox modules, ...) show up in a State.

An Equinox module kept as an attribute stays the genuine object with plain
arrays; only `split`/`state`/transforms box its arrays, so filters can pick
them. The default rule, for an array at `path` under foreign pytree nodes of
types `ancestors`:

- inside an `eqx.nn.State` (BatchNorm statistics, ...) -> `BatchStat`;
- an inexact (float/complex) array                      -> `Param`;
- any other array (ints, bools, PRNG keys)              -> `ForeignState`.

Change it per field with `register_leaf_type(EqxClass, "field", VariableType)`
or with any rule `fn(path, array, ancestors) -> type | None` through
`leaf_types(fn)` (a context manager and decorator; `None` falls back).
"""

from __future__ import annotations

import contextlib
import typing as tp

import jax.numpy as jnp

from nnxfn.core.registry import set_foreign_leaf_classifier
from nnxfn.facade import context
from nnxfn.facade.variables import BatchStat, Param, Variable

A = tp.TypeVar("A")
Path = tuple[tp.Hashable, ...]
# `fn(path, array, ancestors) -> Variable type | None`; ancestors are the types of the
# foreign pytree nodes above the array, outermost first.
Rule = tp.Callable[[Path, object, tuple[type, ...]], "type | None"]


class ForeignState(Variable[A]):
    """A non-trainable array of a foreign pytree (an int counter, a bool mask,
    a PRNG key of an Equinox module). Not selected by `nnx.Param`, so
    `nnx.grad` and `nnx.Optimizer` leave it alone."""


_FIELDS: dict[tuple[type, tp.Hashable], type] = {}
_RULES: list[Rule] = []


def register_leaf_type(owner: type, field: tp.Hashable, variable_type: type | None) -> None:
    """Box the arrays at `owner.field` (for every instance of the foreign
    pytree class `owner` or a subclass) as `variable_type`; `None` removes
    the entry.

    >>> register_leaf_type(eqx.nn.Linear, "bias", nnx.BatchStat)  # bias not trained
    """
    if variable_type is not None:
        _check_type(variable_type)
        _FIELDS[(owner, field)] = variable_type
    else:
        _FIELDS.pop((owner, field), None)
    context.bump_structure()  # cached flat views hold the old boxing


class leaf_types(contextlib.ContextDecorator):  # noqa: N801 - reads as a function
    """Use `fn(path, array, ancestors) -> type | None` to pick the Variable type
    of foreign-pytree arrays while the context is active (or while the
    decorated function runs). `None` falls back to the default rule.

    >>> class Net(nnx.Module):
    ...     def __init__(self):
    ...         self.enc = eqx.nn.Linear(2, 3, key=jax.random.key(0))
    >>> model = Net()
    >>> with nnx.interop.leaf_types(lambda p, x, a: nnx.BatchStat if "bias" in p else None):
    ...     params = nnx.state(model, nnx.Param)
    >>> sorted(params["enc"])
    ['weight']
    """

    def __init__(self, fn: Rule):
        self.fn = fn

    def __enter__(self) -> leaf_types:
        _RULES.append(self.fn)
        context.bump_structure()
        return self

    def __exit__(self, *exc: object) -> None:
        _RULES.remove(self.fn)
        context.bump_structure()


def _check_type(t: object) -> None:
    if not (isinstance(t, type) and issubclass(t, Variable)):
        raise TypeError(
            f"interop: a leaf type must be a Variable subclass (e.g. nnx.Param, "
            f"nnx.BatchStat, nnx.ForeignState), got {t!r}."
        )


def _state_types() -> tuple[type, ...]:
    try:
        import equinox as eqx
    except ImportError:  # pragma: no cover - equinox is optional
        return ()
    return (eqx.nn.State,)


_STATE_TYPES: list[tuple[type, ...] | None] = [None]


def default_leaf_type(path: Path, value: object, ancestors: tuple[type, ...]) -> type:
    """The default rule (see the module docstring)."""
    state_types = _STATE_TYPES[0]
    if state_types is None:
        state_types = _STATE_TYPES[0] = _state_types()
    if state_types and any(issubclass(a, state_types) for a in ancestors):
        return BatchStat
    dtype = getattr(value, "dtype", None)
    if dtype is not None and jnp.issubdtype(dtype, jnp.inexact):
        return Param
    return ForeignState


def classify(path: Path, value: object, ancestors: tuple[type, ...]) -> type:
    """The Variable type that boxes `value` (an array of a foreign pytree)."""
    for rule in reversed(_RULES):
        found = rule(path, value, ancestors)
        if found is not None:
            _check_type(found)
            return found
    if _FIELDS and path and ancestors:
        for base in ancestors[-1].__mro__:
            found = _FIELDS.get((base, path[-1]))
            if found is not None:
                return found
    return default_leaf_type(path, value, ancestors)


def install_classifier() -> None:
    """Register `classify` with the core (done when `nnxfn.interop` is imported)."""
    set_foreign_leaf_classifier(classify)
