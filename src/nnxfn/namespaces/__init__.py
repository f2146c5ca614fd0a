"""Flax's module paths, as thin namespaces over nnxfn's own implementation.

Code written for Flax imports submodules by path (`from flax.nnx import
statelib`, `from flax.nnx.graphlib import GraphDef`). Each module in this
folder is such a namespace: it re-exports nnxfn objects under the names Flax
uses there. `install()` (run by `nnxfn/__init__.py`) makes each one importable
at its Flax path without the `namespaces` part: `namespaces/statelib.py` is
`nnxfn.statelib`, `namespaces/transforms/iteration.py` is
`nnxfn.transforms.iteration` (the same module object, also an attribute of
its parent package), so the real packages are what sits at the top of
`src/nnxfn/`.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys


def install() -> None:
    """Register every namespace module at its Flax path (`nnxfn.<path>`)."""
    prefix = __name__ + "."
    for info in pkgutil.walk_packages(__path__, prefix):
        if info.ispkg:
            continue
        module = importlib.import_module(info.name)
        path = "nnxfn." + info.name[len(prefix) :]
        sys.modules[path] = module
        parent, _, name = path.rpartition(".")
        setattr(sys.modules[parent], name, module)
