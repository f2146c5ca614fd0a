"""Unique ids that stay unique under copying (Flax's `nnx.ids`).

>>> a = uuid(); a == a, a == uuid()
(True, False)
"""

from __future__ import annotations

import itertools
import threading


class UUID:
    """A hashable id; `copy.copy`/`copy.deepcopy` give a new, different id."""

    __slots__ = ("id",)

    def __init__(self, rawid: int):
        self.id = rawid

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UUID) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"UUID({self.id})"

    def __copy__(self) -> UUID:
        return uuid()

    def __deepcopy__(self, memo: dict) -> UUID:
        return uuid()


class UUIDManager:
    """Calling it returns a new UUID (thread-safe counter)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counter = itertools.count(1)

    def __call__(self) -> UUID:
        with self._lock:
            return UUID(next(self._counter))


uuid = UUIDManager()
