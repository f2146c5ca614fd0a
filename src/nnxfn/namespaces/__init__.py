"""Flax's module paths, as thin namespaces over nnxfn's own implementation.

Code written for Flax imports submodules by path (`from flax.nnx import
statelib`, `from flax.nnx.graphlib import GraphDef`). Each module in this
folder is such a namespace: it re-exports nnxfn objects under the names Flax
uses there. `install_flax_paths()` (run by `nnxfn/__init__.py`) makes each one importable
at its Flax path without the `namespaces` part: `namespaces/statelib.py` is
`nnxfn.statelib`, `namespaces/transforms/iteration.py` is
`nnxfn.transforms.iteration` (the same module object, also an attribute of
its parent package), so the real packages are what sits at the top of
`src/nnxfn/`. This folder never imports the `nnxfn` package itself: it
is given it by `install_flax_paths`, and `top_level()` returns it to the namespaces that look names
up there (`graphlib`'s fallback, `compat`).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import types

_TOP: list[types.ModuleType] = []  # the `nnxfn` package, given by `install_flax_paths`


def top_level(name: str) -> object:
    """`nnxfn.<name>` (the package given to `install_flax_paths`, which `nnxfn/__init__.py` runs);
    AttributeError if it has no such name or is not installed yet."""
    if not _TOP:
        raise AttributeError(f"nnxfn is still being imported: nnxfn.{name} is not available yet")
    return getattr(_TOP[0], name)


def install_flax_paths(top: types.ModuleType) -> None:
    """Register every namespace module at its Flax path (`<top>.<path>`)."""
    _TOP[:] = [top]
    prefix = __name__ + "."
    for info in pkgutil.walk_packages(__path__, prefix):
        if info.ispkg:
            continue
        module = importlib.import_module(info.name)
        path = top.__name__ + "." + info.name[len(prefix) :]
        sys.modules[path] = module
        parent, _, name = path.rpartition(".")
        setattr(sys.modules[parent], name, module)
