"""Filters: expressions that select leaves by `(path, value)`.

Accepted forms: a type (matches instances, e.g. `nnx.Param`), a tag string
(matches values whose `tag` metadata equals it), `...`/`True` (everything),
`False`/`None` (nothing), a tuple/list (any of), a compiled regex
(`re.compile(r"kernel$")`, searched in the path joined by "/"), the classes
below, or a callable `(path, value) -> bool`.
"""

from __future__ import annotations

import dataclasses
import re
import typing as tp

from nnxfn.core import errors

Predicate = tp.Callable[[tuple, tp.Any], bool]
Filter = tp.Any  # see the module docstring for the accepted forms


@dataclasses.dataclass(frozen=True)
class OfType:
    """Matches values that are instances of `type` (or whose `.type` is)."""

    type: type

    def __call__(self, path: tuple, value: tp.Any) -> bool:
        return isinstance(value, self.type) or (
            isinstance(getattr(value, "type", None), type) and issubclass(value.type, self.type)
        )


@dataclasses.dataclass(frozen=True)
class WithTag:
    """Matches values whose `tag` metadata equals `tag`."""

    tag: str

    def __call__(self, path: tuple, value: object) -> bool:
        return _tag_of(value) == self.tag


@dataclasses.dataclass(frozen=True)
class PathContains:
    """Matches values whose path contains `key`; with `exact=False`, whose path
    has a part containing `str(key)` (`PathContains('backbone', exact=False)`)."""

    key: object
    exact: bool = True

    def __call__(self, path: tuple, value: object) -> bool:
        if self.exact:
            return self.key in path
        key = str(self.key)
        return any(key in str(part) for part in path)


@dataclasses.dataclass(frozen=True)
class PathIn:
    """Matches values whose path is one of `paths`."""

    paths: frozenset

    def __init__(self, *paths: tuple):
        object.__setattr__(self, "paths", frozenset(tuple(p) for p in paths))

    def __call__(self, path: tuple, value: object) -> bool:
        return tuple(path) in self.paths


@dataclasses.dataclass(frozen=True)
class PathRegex:
    """Matches values whose path, joined by "/" (`blocks/0/kernel`), `re.search`es `pattern`."""

    pattern: re.Pattern

    def __init__(self, pattern: str | re.Pattern):
        object.__setattr__(self, "pattern", re.compile(pattern))

    def __call__(self, path: tuple, value: object) -> bool:
        return self.pattern.search("/".join(str(k) for k in path)) is not None


class All:
    """Matches when every given filter matches."""

    def __init__(self, *filters: Filter):
        self.filters = filters
        self._preds = tuple(to_predicate(f) for f in filters)

    def __call__(self, path: tuple, value: object) -> bool:
        return all(p(path, value) for p in self._preds)

    def __repr__(self) -> str:
        return f"All{self.filters!r}"


class Any(All):
    """Matches when at least one given filter matches."""

    def __call__(self, path: tuple, value: object) -> bool:
        return any(p(path, value) for p in self._preds)

    def __repr__(self) -> str:
        return f"Any{self.filters!r}"


class Not:
    """Matches when the given filter does not."""

    def __init__(self, filter: Filter):
        self.filter = filter
        self._pred = to_predicate(filter)

    def __call__(self, path: tuple, value: object) -> bool:
        return not self._pred(path, value)

    def __repr__(self) -> str:
        return f"Not({self.filter!r})"


class _Constant:
    def __init__(self, result: bool):
        self.result = result

    def __call__(self, path: tuple, value: object) -> bool:
        return self.result

    def __repr__(self) -> str:
        return "Everything()" if self.result else "Nothing()"


def Everything() -> _Constant:  # noqa: N802 - mirrors Flax's class name
    """Matches every value."""
    return _Constant(True)


def Nothing() -> _Constant:  # noqa: N802
    """Matches no value."""
    return _Constant(False)


def _tag_of(value: object) -> tp.Any:
    items = getattr(value, "metadata_items", None)
    if items is None:
        return None
    return dict(items()).get("tag")


def to_predicate(filter: Filter) -> Predicate:
    """Turn any filter expression into a `(path, value) -> bool` function."""
    if isinstance(filter, (All, Not, _Constant, OfType, WithTag, PathContains, PathIn, PathRegex)):
        return filter
    if isinstance(filter, re.Pattern):
        return PathRegex(filter)
    if filter is Ellipsis or filter is True:
        return _Constant(True)
    if filter is False or filter is None:
        return _Constant(False)
    if isinstance(filter, type):
        return OfType(filter)
    if isinstance(filter, str):
        return WithTag(filter)
    if isinstance(filter, (tuple, list)):
        return Any(*filter)
    if callable(filter):
        return filter
    raise TypeError(errors.bad_filter(filter))


def check_filters(filters: tuple[Filter, ...]) -> tuple[Predicate, ...]:
    """Predicates for a split; `...` may only be last."""
    for i, f in enumerate(filters[:-1]):
        if f is Ellipsis or f is True:
            shown = "..." if f is Ellipsis else "True"
            raise ValueError(errors.ellipsis_not_last(i + 1, len(filters), shown))
    return tuple(to_predicate(f) for f in filters)


def filters_to_predicates(filters: tp.Sequence[Filter]) -> tuple[Predicate, ...]:
    """`to_predicate` of each filter; `...` may only be last."""
    return check_filters(tuple(filters))
