"""Readable, bounded reprs of graph nodes: shapes and dtypes, never array contents."""

from __future__ import annotations

import typing as tp

import jax
import numpy as np

from nnxfn.core import iter_graph
from nnxfn.core.registry import lookup
from nnxfn.facade.valuerepr import value_repr as value_repr, variable_repr as variable_repr
from nnxfn.facade.variables import RngState, Variable
from nnxfn.facade.varmodes import base_type

MAX_DEPTH = 6
MAX_ITEMS = 24


def node_repr(
    node: object, children: tp.Callable[[tp.Any], list], indent: int = 0, seen: set[int] | None = None
) -> str:
    """Nested repr of a graph node; shared objects and cycles shown once."""
    seen = set() if seen is None else seen
    name = type(node).__name__
    if id(node) in seen:
        return f"{name}(<shared, shown above>)"
    seen.add(id(node))
    if indent >= MAX_DEPTH:
        return f"{name}(...)"
    pad = "  " * (indent + 1)
    items = children(node)
    lines = []

    def var_repr(v: Variable, ind: int) -> str:  # a shared Variable is shown once too
        if id(v) in seen:
            return f"{type(v).__name__}(<shared, shown above>)"
        seen.add(id(v))
        return variable_repr(v, ind)

    for key, value in items[:MAX_ITEMS]:
        label = f"{pad}{key}=" if isinstance(key, str) else f"{pad}[{key}]: "
        if isinstance(value, Variable):
            body = var_repr(value, indent + 1)
        elif _is_graph_node(value):
            body = node_repr(value, children, indent + 1, seen)
        elif isinstance(value, (list, tuple)) and any(
            isinstance(v, Variable) or _is_graph_node(v) for v in value
        ):
            inner = ",\n".join(
                f"{pad}  "
                + (
                    node_repr(v, children, indent + 2, seen)
                    if _is_graph_node(v)
                    else var_repr(v, indent + 2)
                    if isinstance(v, Variable)
                    else value_repr(v)
                )
                for v in value[:MAX_ITEMS]
            )
            if len(value) > MAX_ITEMS:
                inner += f",\n{pad}  ... ({len(value) - MAX_ITEMS} more)"
            open_, close = ("[", "]") if isinstance(value, list) else ("(", ")")
            body = f"{open_}\n{inner}\n{pad}{close}"
        else:
            body = value_repr(value)
        lines.append(label + body)
    if len(items) > MAX_ITEMS:
        lines.append(f"{pad}... ({len(items) - MAX_ITEMS} more)")
    comment = stats_comment(node) if indent == 0 else ""
    if not lines:
        return f"{name}(){comment}"
    return f"{name}({comment}\n" + ",\n".join(lines) + "\n" + "  " * indent + ")"


def stats_comment(node: object) -> str:
    """` # Param: 1,234 (4.9 KB), BatchStat: ..., Total: ...`: element counts and
    bytes of the Variables under `node`, by type (each shared Variable once)."""
    totals: dict[str, list[int]] = {}
    for _, value in iter_graph(node):
        if not isinstance(value, Variable):
            continue
        kind = RngState if isinstance(value, RngState) else base_type(type(value))
        size = nbytes = 0
        for leaf in _array_leaves(value.get_raw_value()):
            size += int(np.prod(leaf.shape))
            nbytes += int(np.prod(leaf.shape)) * getattr(leaf.dtype, "itemsize", 0)
        if size:
            entry = totals.setdefault(kind.__name__, [0, 0])
            entry[0] += size
            entry[1] += nbytes
    if not totals:
        return ""
    parts = [f"{k}: {_size(n, b)}" for k, (n, b) in totals.items()]
    if len(totals) > 1:
        parts.append(
            f"Total: {_size(sum(n for n, _ in totals.values()), sum(b for _, b in totals.values()))}"
        )
    return " # " + ", ".join(parts)


def _array_leaves(value: object) -> list:
    leaves = jax.tree.leaves(value, is_leaf=lambda x: isinstance(x, jax.Ref))
    return [x for x in leaves if hasattr(x, "shape") and hasattr(x, "dtype")]


def _size(count: int, nbytes: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if nbytes >= scale:
            return f"{count:,} ({nbytes / scale:.1f} {unit})"
    return f"{count:,} ({nbytes} B)"


def _is_graph_node(value: object) -> bool:
    return lookup(type(value)) is not None
