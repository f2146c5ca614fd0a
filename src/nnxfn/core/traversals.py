"""Flattening nested mappings to `{path: value}` and back (Flax's `nnx.traversals`).

>>> flatten_mapping({"a": {"b": 1}, "c": 2})
{('a', 'b'): 1, ('c',): 2}
>>> unflatten_mapping({"a/b": 1}, sep="/")
{'a': {'b': 1}}
"""

from __future__ import annotations

import typing as tp
from collections.abc import Iterable, Mapping

IsLeaf = tp.Callable[[tuple[tp.Any, ...], tp.Any], bool]


class _EmptyNode:
    """Stands for an empty nested mapping in a flat mapping (`keep_empty_nodes`)."""

    def __repr__(self) -> str:
        return "empty_node"


empty_node = _EmptyNode()


def _walk(
    xs: object, prefix: tuple, is_leaf: IsLeaf | None, keep_empty: bool, out: list[tuple[tuple, tp.Any]]
) -> None:
    if not isinstance(xs, Mapping) or (is_leaf is not None and is_leaf(prefix, xs)):
        out.append((prefix, xs))
        return
    if not xs:
        if keep_empty and prefix:
            out.append((prefix, empty_node))
        return
    for key, value in xs.items():
        _walk(value, prefix + (key,), is_leaf, keep_empty, out)


def flatten_to_sequence(xs: Mapping, /, *, is_leaf: IsLeaf | None = None) -> list[tuple[tuple, tp.Any]]:
    """The `(path, value)` pairs of a nested mapping, in insertion order
    (empty nested mappings are dropped)."""
    if not isinstance(xs, Mapping):
        raise TypeError(f"expected a Mapping, got {type(xs).__qualname__}")
    out: list[tuple[tuple, tp.Any]] = []
    _walk(xs, (), is_leaf, False, out)
    return out


def flatten_mapping(
    xs: Mapping, /, *, keep_empty_nodes: bool = False, is_leaf: IsLeaf | None = None, sep: str | None = None
) -> dict:
    """`{path: value}` for a nested mapping; paths are key tuples, or
    `sep`-joined strings. Empty nested mappings are dropped unless
    `keep_empty_nodes` (then their value is `empty_node`)."""
    if not isinstance(xs, Mapping):
        raise TypeError(f"expected a Mapping, got {type(xs).__qualname__}")
    out: list[tuple[tuple, tp.Any]] = []
    _walk(xs, (), is_leaf, keep_empty_nodes, out)
    if sep is None:
        return dict(out)
    return {sep.join(path): value for path, value in out}


def unflatten_mapping(xs: Mapping | Iterable, /, *, sep: str | None = None) -> dict:
    """The nested dict of a flat mapping (or of `(path, value)` pairs)."""
    items = xs.items() if isinstance(xs, Mapping) else xs
    if not isinstance(items, Iterable):
        raise TypeError(f"expected a Mapping or pairs, got {type(xs).__qualname__}")
    result: dict = {}
    for path, value in items:
        if sep is not None:
            path = path.split(sep)
        if value is empty_node:
            value = {}
        cursor = result
        for key in path[:-1]:
            cursor = cursor.setdefault(key, {})
        cursor[path[-1]] = value
    return result
