"""Reusing `split(node)` while nothing structural has changed.

`split` hands out the model's own Variables (as Flax does), so while no
graph anywhere changed structure (the facade bumps `CLOCK` on every
attribute set or delete, list edit and Variable metadata change) and no plain
list/dict in the graph was edited in place, a second `split(node)` would
build exactly the same GraphDef and State: the cached pair is returned
instead. Entries hold their root weakly and go away with it.
"""

from __future__ import annotations

import dataclasses
import operator
import typing as tp
import weakref

from nnxfn.core.kinds import pytree_children

# Moved by the facade on every structural change anywhere (see above).
CLOCK = [0]
_SIZE = 256  # entries kept at most (oldest dropped first)


@dataclasses.dataclass(slots=True, eq=False)
class Entry:
    clock: int  # CLOCK when the graph was walked
    ref: weakref.ref  # the root
    result: tuple  # (graphdef, state)
    containers: list  # (list/dict walked, its snapshot then)


_ENTRIES: dict[int, Entry] = {}


def lookup(node: tp.Any) -> tuple | None:
    """The cached `(graphdef, state)` of `split(node)`, or None if stale or absent."""
    entry = _ENTRIES.get(id(node))
    if entry is None or entry.clock != CLOCK[0] or entry.ref() is not node:
        return None
    for container, snap in entry.containers:
        if not same_snapshot(snapshot(container), snap):
            return None
    return entry.result


def store(node: tp.Any, clock: int, result: tuple, containers: list) -> None:
    """Remember `result` for `node`, walked when the clock read `clock`."""
    key = id(node)

    def drop(_: tp.Any) -> None:
        _ENTRIES.pop(key, None)

    try:
        ref = weakref.ref(node, drop)
    except TypeError:  # cannot be weakly referenced: not cached
        return
    while len(_ENTRIES) >= _SIZE:
        try:
            del _ENTRIES[next(iter(_ENTRIES))]
        except (StopIteration, KeyError, RuntimeError):  # another thread got there
            break
    _ENTRIES[key] = Entry(clock, ref, result, [(c, snapshot(c)) for c in containers])


def snapshot(container: tp.Any) -> tuple:
    """The items of a list/dict (keys and values) or the children of a foreign pytree."""
    if type(container) is dict:
        return (tuple(container), tuple(container.values()))
    if type(container) is list:
        return ((), tuple(container))
    found = pytree_children(container)
    if found is None:
        return (None, ())
    return (found[0], tuple(v for _, v in found[1]))


def same_snapshot(a: tuple, b: tuple) -> bool:
    """Same keys (or treedef) and the very same child objects."""
    return a[0] == b[0] and len(a[1]) == len(b[1]) and all(map(operator.is_, a[1], b[1]))
