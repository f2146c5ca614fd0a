"""How a Variable keeps its value: plainly (the default), or in `jax.Ref`s.

Flax NNX has two opt-in Variable modes, chosen per Variable with
`Variable(x, hijax=..., ref=...)` or for a block of code with
`nnx.var_defaults(hijax=..., ref=...)`:

- `ref=True`: the value lives in a `jax.Ref`; `get_raw_value()` returns it.
- `hijax=True`: writes made inside plain JAX transforms (`jax.jit`,
  `jax.grad`, `jax.lax.scan`, ...) reach the Variable outside, even a
  write that changes the value's structure (a new key in a dict value).

nnxfn keeps both as small subclasses of the Variable's own type (so
`isinstance(v, nnx.Param)` and every filter keep working) that store the
value in `jax.Ref`s (`ref=True`) or in one JAX `Box` (`hijax=True` alone);
JAX itself then carries writes through its transforms. nnxfn's own
transforms need neither mode: they commit writes anyway.
"""

from __future__ import annotations

import copyreg
import dataclasses
import threading
import typing as tp

import jax

# JAX's mutable box (hijax): unlike a `jax.Ref`, the structure of what it holds
# may change inside `jax.jit` and the change reaches the Box outside. JAX does
# not export it yet (Flax builds its own hijax type on `jax.experimental.hijax`).
from jax._src import core as _jax_core
from jax._src.hijax import Box

T = tp.TypeVar("T")
MISSING: tp.Any = type("Missing", (), {"__repr__": lambda self: "MISSING"})()


# -- var_defaults ----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class VarDefaults(tp.Mapping[str, bool]):
    """The current defaults for new Variables (`nnx.var_defaults()`)."""

    hijax: bool = False
    ref: bool = False

    def __getitem__(self, key: str) -> bool:
        if key not in ("hijax", "ref"):
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> tp.Iterator[str]:
        return iter(("hijax", "ref"))

    def __len__(self) -> int:
        return 2


class _Stack(threading.local):
    def __init__(self) -> None:
        self.stack: list[VarDefaults] = [VarDefaults()]


_STACK = _Stack()


def current_defaults() -> VarDefaults:
    return _STACK.stack[-1]


class VarDefaultsContext:
    """Returned by `var_defaults(...)`: already applied; as a context manager it
    restores the previous defaults on exit, as a decorator it applies per call."""

    def __init__(self, previous: VarDefaults, new: VarDefaults):
        self._previous, self._new = previous, new

    def __enter__(self) -> VarDefaults:
        return self._new

    def __exit__(self, *exc: object) -> None:
        stack = _STACK.stack
        # Drop this entry and whatever bare `var_defaults(...)` calls pushed after it.
        if any(entry is self._new for entry in stack[1:]):
            while stack[-1] is not self._new:
                stack.pop()
            stack.pop()

    def __call__(self, fn: tp.Callable) -> tp.Callable:
        import functools

        new = self._new
        self.__exit__(None, None, None)

        @functools.wraps(fn)
        def wrapper(*args: object, **kwargs: object) -> tp.Any:
            _STACK.stack.append(new)
            try:
                return fn(*args, **kwargs)
            finally:
                stack = _STACK.stack
                for i in range(len(stack) - 1, 0, -1):
                    if stack[i] is new:
                        del stack[i]
                        break

        return wrapper


@tp.overload
def var_defaults() -> VarDefaults: ...
@tp.overload
def var_defaults(*, hijax: bool | None = None, ref: bool | None = None) -> VarDefaultsContext: ...
def var_defaults(*, hijax: bool | None = None, ref: bool | None = None) -> tp.Any:
    """Read (no arguments) or set the defaults for Variables created from now on.

    `with nnx.var_defaults(hijax=True): ...` sets them for a block,
    `@nnx.var_defaults(ref=True)` for every call of a function, and a bare
    call `nnx.var_defaults(hijax=True)` until the enclosing block ends.
    """
    previous = current_defaults()
    if hijax is None and ref is None:
        return previous
    new = VarDefaults(
        previous.hijax if hijax is None else bool(hijax),
        previous.ref if ref is None else bool(ref),
    )
    _STACK.stack.append(new)
    return VarDefaultsContext(previous, new)


# -- Ref storage ---------------------------------------------------------------------------
def is_ref(x: object) -> bool:
    return isinstance(x, jax.Ref)


# -- Box storage (hijax) ------------------------------------------------------------------------
def is_box(x: object) -> bool:
    return isinstance(x, Box)


def to_box(value: object) -> tp.Any:
    """`value` (its plain arrays) in a new JAX `Box`."""
    return Box._new(from_refs(value))


def tracing() -> bool:
    """True inside a JAX trace (`jax.jit`, `jax.grad`, ...)."""
    return not isinstance(_jax_core.trace_ctx.trace, _jax_core.EvalTrace)


def is_mutable(x: object) -> bool:
    """A `jax.Ref` or a `Box`: what a trace cannot return as such."""
    return isinstance(x, (jax.Ref, Box))


def read(x: tp.Any) -> tp.Any:
    """The value held by a `jax.Ref` or `Box`."""
    return x.get() if isinstance(x, Box) else x[...]


def box_set(box: tp.Any, value: object) -> None:
    """`box.set(value)`. Under `jax.grad`, a Box made outside the differentiated
    function (e.g. BatchNorm statistics) cannot hold a value that carries a
    derivative: it gets the value without it (state is not differentiated)."""
    try:
        box.set(value)
    except Exception as e:
        if "differentiate Box.set" not in str(e):
            raise
        box.set(jax.lax.stop_gradient(value))


def to_refs(value: object) -> tp.Any:
    """`value` with each array leaf in its own `jax.Ref` (Refs kept as they are)."""
    return jax.tree.map(lambda x: x if is_ref(x) else jax.new_ref(x), value)


def from_refs(value: tp.Any) -> tp.Any:
    """The plain value behind `to_refs`."""
    if is_ref(value):
        return value[...]
    return jax.tree.map(lambda x: x[...] if is_ref(x) else x, value, is_leaf=is_ref)


# (base type, hijax, ref) -> its mode subclass. A registry, not a cache: the
# class made for a key must stay the same class (`type(v) is type(w)`, GraphDef
# equality, pickling), so it is kept whether or not caching is on.
_TYPES: dict[tuple[type, bool, bool], type] = {}
# The mixins of the mode subclasses, `{hijax: mixin}`: RefVariable and
# HijaxVariable are Variables, so `variables.py` (built on this module)
# registers them when it is imported (`register_mode_mixins`).
_MIXINS: dict[bool, type] = {}


def register_mode_mixins(*, ref: type, hijax: type) -> None:
    """Called by `variables.py`: the mixin classes of the `ref=True` and `hijax=True` types."""
    _MIXINS[False] = ref
    _MIXINS[True] = hijax


class ModeType(type):
    """Metaclass of the `hijax`/`ref` subclasses. A mode is how a Variable keeps
    its value, not another kind of Variable (in Flax it is a flag), so
    `isinstance(v, T)` holds for every instance of T's base type: a plain
    `Param` fits where the GraphDef of a hijax model expects its `Param`s
    (`nnx.merge(graphdef, nnx.with_vars(params, hijax=False))`)."""

    hijax: bool  # class attributes of every mode type (see `mode_type`)
    _mode_ref: bool

    def __instancecheck__(cls, obj: object) -> bool:
        return isinstance(obj, cls.__dict__["_mode_base"])


def _reduce_mode_type(cls: ModeType) -> tuple:
    """Pickle a mode type as the call that makes it (it has no importable name)."""
    return _mode_type_of, (cls.__dict__["_mode_base"], bool(cls.hijax), bool(cls._mode_ref))


def _mode_type_of(base: type, hijax: bool, ref: bool) -> type:
    return mode_type(base, hijax=hijax, ref=ref)


copyreg.pickle(ModeType, _reduce_mode_type)


def base_type(cls: type[T]) -> type[T]:
    """The user-facing Variable type behind a `hijax`/`ref` subclass."""
    return cls.__dict__.get("_mode_base") or cls


def mode_type(cls: type[T], *, hijax: bool, ref: bool) -> type[T]:
    """The subclass of `cls` whose instances keep their value as asked."""
    base = base_type(cls)
    if not hijax and not ref:
        return base
    key = (base, hijax, ref)
    found = _TYPES.get(key)
    if found is None:
        mixin = _MIXINS[bool(hijax)]
        found = ModeType(
            base.__name__,
            (mixin, base),
            {
                "__slots__": (),
                "_mode_base": base,
                "_mode_ref": ref,
                "__module__": base.__module__,
                "__qualname__": base.__qualname__,
            },
        )
        _TYPES[key] = found
    return tp.cast("type[T]", found)  # a subclass of `base` (the ModeType call above)
