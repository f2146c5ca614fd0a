"""Every cache nnxfn keeps from one call to the next, and the switch that turns them off.

A cache here only saves work: with caching off every call recomputes and the
results are the same (the core test suite runs both ways). Caching is on
unless the environment sets `NNXFN_CACHE=0` (or `false`/`off`) before nnxfn
is imported; `set_caching(False)` / `with caching(False):` switch it at run
time and clear every cache.

- `CacheTable` — a named dict, registered here. Lookups are plain `dict.get`;
  `put` stores only while caching is on, so with caching off every lookup
  misses.
- `STRUCTURE` — the structure clock: moved by every structural change to
  any graph (an attribute set or deleted, a list edited, Variable metadata
  changed). A cached answer records the tick it was computed at and is
  stale once the clock has moved.
- `enabled()` — for memos kept on objects rather than in a `CacheTable`.
"""

from __future__ import annotations

import contextlib
import os
import typing as tp

K = tp.TypeVar("K")
V = tp.TypeVar("V")

_OFF = {"0", "false", "off", "no"}


class _Switch:
    __slots__ = ("on",)

    def __init__(self) -> None:
        self.on = os.environ.get("NNXFN_CACHE", "1").strip().lower() not in _OFF


SWITCH = _Switch()
_ALL: list[CacheTable[tp.Any, tp.Any]] = []


class CacheTable(dict[K, V]):
    """A registered cross-call cache: read with `get`, write with `put`, cleared by the switch."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        _ALL.append(self)

    def put(self, key: K, value: V) -> V:
        """Store `value` (while caching is on) and return it."""
        if SWITCH.on:
            self[key] = value
        return value

    def __repr__(self) -> str:
        return f"CacheTable({self.name!r}, {len(self)} entries)"


class Clock:
    """A counter moved by events that make cached answers stale."""

    __slots__ = ("now",)

    def __init__(self) -> None:
        self.now = 0

    def tick(self) -> None:
        self.now += 1


STRUCTURE = Clock()


def enabled() -> bool:
    """Whether caching is on."""
    return SWITCH.on


def all_caches() -> tuple[CacheTable[tp.Any, tp.Any], ...]:
    """Every registered cache (for inspection and tests)."""
    return tuple(_ALL)


def clear() -> None:
    """Empty every cache and move the structure clock (per-object memos go stale)."""
    for cache in _ALL:
        cache.clear()
    STRUCTURE.tick()


def set_caching(on: bool) -> None:
    """Turn caching on or off for the whole process; every cache starts empty."""
    SWITCH.on = bool(on)
    clear()


@contextlib.contextmanager
def caching(on: bool) -> tp.Iterator[None]:
    """`with caching(False): ...` runs the block with caching off (or on), then restores."""
    before = SWITCH.on
    set_caching(on)
    try:
        yield
    finally:
        set_caching(before)
