"""Bounded reprs of one value and of one Variable: shapes and dtypes, never
array contents (below `variables.py`, whose `__repr__` uses them; `display.py`
builds the nested reprs of graph nodes on them)."""

from __future__ import annotations

import typing as tp

if tp.TYPE_CHECKING:
    from nnxfn.core import VariableLike


def value_repr(value: object) -> str:
    """`Array(shape=(3, 8), dtype=float32)` for arrays, else the repr cut at 80 characters."""
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape is not None and dtype is not None:
        return f"Array(shape={tuple(shape)}, dtype={dtype})"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def variable_repr(var: VariableLike, indent: int = 0) -> str:
    """`Param(value=Array(...), sharding=...)` over lines indented `indent` levels."""
    pad = "  " * indent
    lines = [f"{pad}  value={value_repr(var.raw_value)}"]
    lines += [f"{pad}  {k}={value_repr(v)}" for k, v in var.metadata_items()]
    return f"{type(var).__name__}(\n" + ",\n".join(lines) + f"\n{pad})"
