"""`set_graph_mode` / `set_graph_updates`: Flax NNX's mode switches.

They select Flax's results: with graph mode off (tree mode) or graph updates
off, the transforms return what Flax's tree mode returns (gradients shaped
like the Module, structural updates made inside dropped) and reject what it
rejects; one engine computes both. A transform reads them when it is made
(`nnx.grad(f)` under `set_graph_mode(False)` stays a tree-mode grad), a
`graph=`/`graph_updates=` argument wins over them. The defaults come from the
environment variables `NNX_GRAPH_MODE` and `NNX_GRAPH_UPDATES` (true/false, as
Flax reads them; unset: True, Flax 0.12's default).
Each switch keeps a per-thread stack of values and can be used three ways:

>>> _ = set_graph_mode(False)        # plain call: sets the value from now on
>>> with set_graph_mode(True):       # context manager: restored on exit
...     set_graph_mode.current_value()
True
>>> @set_graph_mode(True)            # decorator: set while the function runs
... def f():
...     return set_graph_mode.current_value()
>>> f(), set_graph_mode.current_value()
(True, False)
>>> _ = set_graph_mode(True)

`set_graph_mode.current_value()` reads the value in effect (default True).
"""

from __future__ import annotations

import functools
import os
import threading
import typing as tp

F = tp.TypeVar("F", bound=tp.Callable[..., tp.Any])

_NOTHING = object()  # "the stack was empty before this switch was made"
_TRUE = ("y", "yes", "t", "true", "on", "1")
_FALSE = ("n", "no", "f", "false", "off", "0")


def env_flag(name: str, default: bool = True) -> bool:
    """A boolean read from the environment variable `name` (Flax's spellings:
    true/false, yes/no, on/off, 1/0, any case); `default` when unset."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise ValueError(
        f"Invalid value {raw!r} for the environment variable {name}: set it to true or "
        "false (yes/no, on/off, y/n, t/f and 1/0 work too, in any case), or unset it."
    )


class ModeSwitch:
    """A boolean setting with a per-thread stack (see the module docstring).

    Making the object sets the value at once (so a plain call takes effect);
    `with` restores the previous value on exit; used as a decorator, the
    construction-time change is undone and the value is set only while the
    decorated function runs.
    """

    default: tp.ClassVar[bool] = True
    _local: tp.ClassVar[threading.local]

    def __init_subclass__(cls, **kwargs: tp.Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._local = threading.local()

    @classmethod
    def get_default(cls) -> bool:
        """The value when nothing was set on this thread."""
        return cls.default

    @classmethod
    def get_stack(cls) -> list:
        """This thread's stack of values set (the last one is in effect)."""
        stack = getattr(cls._local, "stack", None)
        if stack is None:
            stack = cls._local.stack = []
        return stack

    def __init__(self, value: bool, /):
        stack = self.get_stack()
        self.value = value
        self._previous = stack[-1] if stack else _NOTHING
        if stack:
            stack[-1] = value
        else:
            stack.append(value)

    @classmethod
    def current_value(cls) -> bool:
        """The value in effect on this thread."""
        stack = cls.get_stack()
        return stack[-1] if stack else cls.get_default()

    def __enter__(self) -> None:
        if self._previous is not _NOTHING:  # keep the old value under ours
            stack = self.get_stack()
            stack.insert(len(stack) - 1, self._previous)

    def __exit__(self, *exc: object) -> None:
        self.get_stack().pop()

    def __call__(self, fn: F) -> F:
        stack = self.get_stack()  # undo the change made at construction
        stack.pop()
        if self._previous is not _NOTHING:
            stack.append(self._previous)
        value = self.value

        @functools.wraps(fn)
        def wrapper(*args: object, **kwargs: tp.Any) -> tp.Any:
            stack = self.get_stack()  # this thread's stack, at call time
            stack.append(value)
            try:
                return fn(*args, **kwargs)
            finally:
                stack.pop()

        return tp.cast(F, wrapper)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.value!r})"


class set_graph_mode(ModeSwitch):  # noqa: N801 - Flax's name
    """Flax's graph (True) / tree (False) mode switch (default: `NNX_GRAPH_MODE`,
    else True). With False, transforms give Flax's tree-mode results and what
    tree mode rejects (shared Variables, cycles, ...) raises Flax's errors (see
    `core/treemode.py`, `transforms/treemode.py`)."""

    default = env_flag("NNX_GRAPH_MODE")


class set_graph_updates(ModeSwitch):  # noqa: N801 - Flax's name
    """Flax's graph-updates switch (default: `NNX_GRAPH_UPDATES`, else True).
    With False, transforms carry only Variable values out (structural updates
    made inside are dropped), give gradients shaped like the Module, and raise
    Flax's errors for what that mode rejects (e.g. an input Variable returned as
    an output; see `transforms/treemode.py`)."""

    default = env_flag("NNX_GRAPH_UPDATES")


__all__ = ["ModeSwitch", "set_graph_mode", "set_graph_updates"]
