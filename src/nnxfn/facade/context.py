"""Bookkeeping shared by the facade and the transforms.

- A stack of transform *frames*, one per thread (threads trace and run
  concurrently). Objects remember the frame they were created in; writing to
  an object from inside a transform that did not create it (a closure
  capture) is an error instead of a silently lost update.
- Structure versions. Every structural mutation (an attribute added,
  rebound or deleted, a list grown, Variable metadata changed) stamps the
  object it happened on with a fresh number (`version_of`) and moves the
  process-wide epoch, an O(1) "nothing changed anywhere" check. A cache of
  flattened structure re-validates by comparing the versions of its own
  objects when the epoch moved; only a change of the rules that apply to
  every object (`bump_structure()` without an object) invalidates all.
"""

from __future__ import annotations

import dataclasses
import threading
import warnings
import weakref

from nnxfn.core import caches as core_caches
from nnxfn.facade.captured import captured_where


@dataclasses.dataclass(eq=False)
class Frame:
    """One active transform trace, e.g. the body of an `nnx.jit` call."""

    name: str


class _Local(threading.local):
    """Per-thread transform context: the stack of active frames."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []


LOCAL = _Local()

# Owner of Variables that JAX rebuilt from tracers outside any nnxfn transform
# (e.g. a Module passed through `jax.jit` or `eqx.filter_jit` as a pytree).
FOREIGN = Frame("a JAX transform")


class TraceContextError(Exception):
    """A Variable or Module was changed inside a JAX trace other than the one it
    was made in (as Flax's `flax.errors.TraceContextError`)."""


# id -> (weakref, parent weakref or None, path below the parent); Variables compare by value
_foreign_paths: dict[int, tuple] = {}


def remember_foreign_path(obj: object, path: tuple) -> None:
    """`obj` was rebuilt by a JAX transform at `path` of the rebuilt model."""
    key = id(obj)
    _foreign_paths[key] = (weakref.ref(obj, lambda _: _foreign_paths.pop(key, None)), None, path)


def remember_foreign_parent(obj: object, parent: object, path: tuple) -> None:
    """`obj` was rebuilt by a JAX transform at `path` below `parent` (itself
    rebuilt): the full path is read from the parents when a message needs it."""
    key = id(obj)
    _foreign_paths[key] = (
        weakref.ref(obj, lambda _: _foreign_paths.pop(key, None)),
        weakref.ref(parent),
        path,
    )


def _foreign_path(obj: object) -> tuple | None:
    """The path of a rebuilt object in its rebuilt model, or None if unknown."""
    entry = _foreign_paths.get(id(obj))
    if entry is None or entry[0]() is not obj:
        return None
    path = entry[2]
    for _ in range(10_000):  # parents up to the root (bounded: rebuilt graphs have no cycles)
        parent = entry[1]() if entry[1] is not None else None
        if parent is None:
            return path
        entry = _foreign_paths.get(id(parent))
        if entry is None or entry[0]() is not parent:
            return path
        path = entry[2] + path
    return path


_EPOCH = core_caches.STRUCTURE  # moved by every structural change anywhere (cached splits read it)
_HARD = core_caches.Clock()  # moved by changes that concern every object (e.g. leaf boxing rules)


def current_frame() -> Frame | None:
    frames = LOCAL.frames
    return frames[-1] if frames else None


def push_frame(frame: Frame) -> None:
    LOCAL.frames.append(frame)


def pop_frame(frame: Frame) -> None:
    frames = LOCAL.frames
    assert frames and frames[-1] is frame, "transform frames out of order"
    frames.pop()


def structure_epoch() -> int:
    return _EPOCH.now


def hard_epoch() -> int:
    return _HARD.now


def bump_structure(obj: object = None) -> None:
    """Record a structural change of `obj` (of everything if `obj` is None)."""
    _EPOCH.tick()
    if obj is None:
        _HARD.tick()
        return
    d = obj.__dict__
    d["_nnx_version"] = _EPOCH.now
    d.pop("_nnx_tree", None)  # its pytree memo (see jaxtree.py) no longer holds: drop what it refers to


def metadata_changed() -> None:
    """A Variable's metadata was replaced (caches compare metadata by identity)."""
    _EPOCH.tick()


def version_of(obj: object) -> int:
    """The epoch of `obj`'s last structural change (0: none recorded)."""
    return obj.__dict__.get("_nnx_version", 0)


def check_write(obj: object, owner: Frame | None, what: str) -> None:
    """Raise if `obj` (created in frame `owner`) is written inside another frame;
    warn if it was rebuilt by a non-nnxfn transform (the write would be lost)."""
    frames = LOCAL.frames
    if owner is FOREIGN and not frames:
        warnings.warn(_foreign_message(obj, what), stacklevel=4)
        return
    if frames and owner is not frames[-1]:
        frame = frames[-1]
        raise RuntimeError(
            f"{frame.name}: {what} of {captured_where(obj, _describe(obj))} was changed inside the "
            "transform, but that object was not passed to it: it is captured by "
            "closure (or made in an enclosing transform), so the change cannot be "
            "committed and would be lost. Pass it as an argument instead, e.g. "
            f"`{frame.name}(f)(model, x)` with `def f(model, x): ...`."
        )


def _describe(obj: object) -> str:
    name = type(obj).__name__
    value = getattr(obj, "raw_value", None)
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"a {name} of shape {tuple(shape)} and dtype {getattr(value, 'dtype', '?')}"
    return f"a {name}"


def _foreign_message(obj: object, what: str) -> str:
    path = _foreign_path(obj)
    where = (
        "model" + "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in path)
        if path is not None
        else _describe(obj)
    )
    return (
        f"{what} of {where} was written inside a JAX transform that is not an nnxfn "
        "transform (e.g. `jax.jit` or `eqx.filter_jit`): the Module there is a copy "
        "rebuilt from traced leaves, so the write will be lost when the transform "
        "returns (Dropout would reuse its mask, BatchNorm would not update). Fix: use "
        "`nnx.jit` (or the other nnx transforms), or use the functional view: "
        "`view = nnx.as_pytree(model)`, return the updated view from the function, "
        "and `nnx.update(model, view)`."
    )
