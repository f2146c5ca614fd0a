"""Process-wide bookkeeping shared by the facade and the transforms.

- A stack of transform *frames*. Objects remember the frame they were created
  in; writing to an object from inside a transform that did not create it
  (a closure capture) is an error instead of a silently lost update.
- A structure epoch: a counter bumped by every structural mutation (an
  attribute added, rebound or deleted, a list grown, Variable metadata
  changed). Caches of flattened structure are valid while it is unchanged.
"""

from __future__ import annotations

import dataclasses
import typing as tp
import warnings
import weakref


@dataclasses.dataclass(eq=False)
class Frame:
    """One active transform trace, e.g. the body of an `nnx.jit` call."""

    name: str


_FRAMES: list[Frame] = []

# Owner of Variables that JAX rebuilt from tracers outside any nnxfn transform
# (e.g. a Module passed through `jax.jit` or `eqx.filter_jit` as a pytree).
FOREIGN = Frame("a JAX transform")
_foreign_paths: dict[int, tuple] = {}  # id -> (weakref, path); Variables compare by value


def remember_foreign_path(obj: tp.Any, path: tuple) -> None:
    key = id(obj)
    _foreign_paths[key] = (weakref.ref(obj, lambda _: _foreign_paths.pop(key, None)), path)
_EPOCH = [0]


def current_frame() -> Frame | None:
    return _FRAMES[-1] if _FRAMES else None


def push_frame(frame: Frame) -> None:
    _FRAMES.append(frame)


def pop_frame(frame: Frame) -> None:
    assert _FRAMES and _FRAMES[-1] is frame, "transform frames out of order"
    _FRAMES.pop()


def structure_epoch() -> int:
    return _EPOCH[0]


def bump_structure() -> None:
    _EPOCH[0] += 1


def check_write(obj: tp.Any, owner: Frame | None, what: str) -> None:
    """Raise if `obj` (created in frame `owner`) is written inside another frame;
    warn if it was rebuilt by a non-nnxfn transform (the write would be lost)."""
    if owner is FOREIGN and not _FRAMES:
        warnings.warn(_foreign_message(obj, what), stacklevel=4)
        return
    if _FRAMES and owner is not _FRAMES[-1]:
        from nnxfn.facade.captured import captured_where  # names the path (error path only)

        frame = _FRAMES[-1]
        raise RuntimeError(
            f"{frame.name}: {what} of {captured_where(obj, _describe(obj))} was changed inside the "
            "transform, but that object was not passed to it: it is captured by "
            "closure (or made in an enclosing transform), so the change cannot be "
            "committed and would be lost. Pass it as an argument instead, e.g. "
            f"`{frame.name}(f)(model, x)` with `def f(model, x): ...`."
        )


def _describe(obj: tp.Any) -> str:
    name = type(obj).__name__
    value = getattr(obj, "raw_value", None)
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"a {name} of shape {tuple(shape)} and dtype {value.dtype}"
    return f"a {name}"


def _foreign_message(obj: tp.Any, what: str) -> str:
    ref, path = _foreign_paths.get(id(obj), (None, None))
    if ref is None or ref() is not obj:
        path = None
    where = "model" + "".join(
        f"[{k}]" if isinstance(k, int) else f".{k}" for k in path
    ) if path is not None else _describe(obj)
    return (
        f"{what} of {where} was written inside a JAX transform that is not an nnxfn "
        "transform (e.g. `jax.jit` or `eqx.filter_jit`): the Module there is a copy "
        "rebuilt from traced leaves, so the write will be lost when the transform "
        "returns (Dropout would reuse its mask, BatchNorm would not update). Fix: use "
        "`nnx.jit` (or the other nnx transforms), or use the functional view: "
        "`view = nnx.as_pytree(model)`, return the updated view from the function, "
        "and `nnx.update(model, view)`."
    )
