"""`nnx.visualization`: showing graph objects (`nnx.display`)."""

from __future__ import annotations

import typing as tp


def display(*args: tp.Any) -> None:
    """Print each argument's nnxfn repr (shapes and dtypes, never array contents)."""
    for arg in args:
        print(repr(arg))
