"""Name a captured object by its path, for the captured-write error.

When a transform body writes to an object it was not given (a closure
capture), the error should say *which* object: `model.l1.kernel`, not "a
Param of shape (3, 8)". The object is looked up in the graphs the user's code
can see at the failing line: the locals (closure cells included) and the
globals of each calling frame outside nnxfn and JAX, innermost first, and
named `<variable>.<path>`. If no frame holds it, the owning objects are found
through the garbage collector's referrers (`Linear.kernel` inside
`Model.l1`). Runs only when the error is raised.
"""

from __future__ import annotations

import gc
import os
import sys
import types
import typing as tp
import warnings

from nnxfn.core import iter_graph
from nnxfn.facade.pytreeview import is_graph, is_object

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _library_file(filename: str) -> bool:
    path = os.path.abspath(filename)
    return path.startswith(_PACKAGE) or f"{os.sep}jax{os.sep}" in path or f"{os.sep}jaxlib{os.sep}" in path


def _path_text(root: str, path: tuple) -> str:
    out = root
    for key in path:
        out += f"[{key}]" if isinstance(key, int) or not str(key).isidentifier() else f".{key}"
    return out


def _graph_like(value: object) -> bool:
    if is_graph(value):  # a Module, Variable or other graph object
        return True
    if isinstance(value, (list, tuple)):  # a plain list of models/layers
        return any(map(is_graph, value))
    if isinstance(value, dict):
        return any(map(is_graph, value.values()))
    return False


def _find_in(obj: object, roots: tp.Iterable[tuple[str, object]]) -> str | None:
    for name, root in roots:
        if name.startswith("_") or not _graph_like(root):
            continue
        if root is obj:
            return name
        try:
            for path, node in iter_graph(root):
                if node is obj:
                    return _path_text(name, path)
        except Exception:  # noqa: BLE001 - an odd object in user code: look elsewhere
            continue
    return None


def _from_frames(obj: object, frame: types.FrameType | None) -> str | None:
    seen_globals: set[int] = set()
    while frame is not None:
        if not _library_file(frame.f_code.co_filename):
            found = _find_in(obj, list(frame.f_locals.items()))
            if found is not None:
                return found
            g = frame.f_globals
            if id(g) not in seen_globals:
                seen_globals.add(id(g))
                names = [n for n in frame.f_code.co_names if n in g]
                found = _find_in(obj, [(n, g[n]) for n in names])
                if found is not None:
                    return found
        frame = frame.f_back
    return None


def _from_owners(obj: object, depth: int = 8) -> str | None:
    """`Model.l1.kernel` from the chain of objects whose attribute holds `obj`."""
    parts: list[str] = []
    current = obj
    for _ in range(depth):
        owner = None
        for ref in gc.get_referrers(current):
            if not isinstance(ref, dict):
                continue
            for candidate in gc.get_referrers(ref):
                if is_object(candidate) and candidate.__dict__ is ref:
                    key = next((k for k, v in ref.items() if v is current), None)
                    if key is not None:
                        owner = candidate
                        parts.insert(0, str(key))
                        break
            if owner is not None:
                break
        if owner is None:
            break
        current = owner
    if not parts:
        return None
    return f"{type(current).__name__}." + ".".join(parts)


def captured_where(obj: object, description: str) -> str:
    """`model.l1.kernel (a Param of shape (3, 8) ...)`, or the description alone."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            where = _from_frames(obj, sys._getframe(1)) or _from_owners(obj)
    except Exception:  # noqa: BLE001 - the message must never fail
        where = None
    return f"{where} ({description})" if where else description
