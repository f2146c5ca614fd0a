"""Readable, bounded reprs: shapes and dtypes, never array contents."""

from __future__ import annotations

import typing as tp

MAX_DEPTH = 6
MAX_ITEMS = 24


def value_repr(value: tp.Any) -> str:
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape is not None and dtype is not None:
        return f"Array(shape={tuple(shape)}, dtype={dtype})"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def variable_repr(var: tp.Any, indent: int = 0) -> str:
    pad = "  " * indent
    lines = [f"{pad}  value={value_repr(var.raw_value)}"]
    lines += [f"{pad}  {k}={value_repr(v)}" for k, v in var.metadata_items()]
    return f"{type(var).__name__}(\n" + ",\n".join(lines) + f"\n{pad})"


def node_repr(node: tp.Any, children: tp.Callable[[tp.Any], list], indent: int = 0,
              seen: set[int] | None = None) -> str:
    """Nested repr of a graph node; shared objects and cycles shown once."""
    from nnxfn.facade.variables import Variable

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

    def var_repr(v: tp.Any, ind: int) -> str:  # a shared Variable is shown once too
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
                f"{pad}  " + (node_repr(v, children, indent + 2, seen) if _is_graph_node(v)
                              else var_repr(v, indent + 2) if isinstance(v, Variable)
                              else value_repr(v))
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
    if not lines:
        return f"{name}()"
    return f"{name}(\n" + ",\n".join(lines) + "\n" + "  " * indent + ")"


def _is_graph_node(value: tp.Any) -> bool:
    from nnxfn.core.registry import lookup

    return lookup(type(value)) is not None
