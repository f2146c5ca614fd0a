"""Reusing `split(node)` while nothing structural has changed.

`split` hands out the model's own Variables (as Flax does), so while no
graph anywhere changed structure (the facade ticks `caches.STRUCTURE` on
every attribute set or delete, list edit and Variable metadata change) and
no plain list/dict in the graph was edited in place, a second `split(node)`
would build exactly the same GraphDef and State: the remembered pair is
returned instead. Entries live in the registered cache `SPLITS` (see
`caches.py`: off with `NNXFN_CACHE=0`), hold their root weakly and go away
with it.
"""

from __future__ import annotations

import dataclasses
import operator
import typing as tp
import weakref

import jax

from nnxfn.core import caches

if tp.TYPE_CHECKING:
    from nnxfn.core.graphdef import GraphDef
    from nnxfn.core.state import State

_SIZE = 256  # entries kept at most (oldest dropped first)


class Snapshot(tp.NamedTuple):
    """What a list/dict/foreign pytree held: its keys (or treedef) and its child objects."""

    keys: object
    children: tuple[object, ...]


@dataclasses.dataclass(slots=True, eq=False)
class SplitEntry:
    """One remembered split: valid while the clock reads `clock` and no container changed."""

    clock: int  # `caches.STRUCTURE.now` when the graph was walked
    ref: weakref.ref[tp.Any]  # the root
    result: tuple[GraphDef, State]
    containers: list[tuple[object, Snapshot]]  # (list/dict walked, its snapshot then)


SPLITS: caches.CacheTable[int, SplitEntry] = caches.CacheTable("split")


def cached_split(node: object) -> tuple[GraphDef, State] | None:
    """The remembered `(graphdef, state)` of `split(node)`, or None if stale or absent."""
    entry = SPLITS.get(id(node))
    if entry is None or entry.clock != caches.STRUCTURE.now or entry.ref() is not node:
        return None
    for container, snap in entry.containers:
        if not same_snapshot(snapshot(container), snap):
            return None
    return entry.result


def remember_split(
    node: object, clock: int, result: tuple[GraphDef, State], containers: tp.Iterable[object]
) -> None:
    """Remember `result` for `node`, walked when the structure clock read `clock`."""
    if not caches.enabled():
        return
    key = id(node)

    def drop(_: object) -> None:
        SPLITS.pop(key, None)

    try:
        ref = weakref.ref(node, drop)
    except TypeError:  # cannot be weakly referenced: not cached
        return
    while len(SPLITS) >= _SIZE:
        try:
            del SPLITS[next(iter(SPLITS))]
        except (StopIteration, KeyError, RuntimeError):  # another thread got there
            break
    SPLITS.put(key, SplitEntry(clock, ref, result, [(c, snapshot(c)) for c in containers]))


def snapshot(container: object) -> Snapshot:
    """The items of a list/dict (keys and values) or the children of a foreign pytree."""
    if type(container) is dict:
        return Snapshot(tuple(container), tuple(container.values()))
    if type(container) is list:
        return Snapshot((), tuple(container))
    children, treedef = jax.tree_util.tree_flatten(container, is_leaf=lambda y: y is not container)
    if len(children) == 1 and children[0] is container:  # a leaf, not a pytree node
        return Snapshot(None, ())
    return Snapshot(treedef, tuple(children))


def same_snapshot(a: Snapshot, b: Snapshot) -> bool:
    """Same keys (or treedef) and the very same child objects."""
    return (
        a.keys == b.keys
        and len(a.children) == len(b.children)
        and all(map(operator.is_, a.children, b.children))
    )
