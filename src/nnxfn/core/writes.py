"""The in-place writes: `update` (values into an existing graph) and `pop`
(remove Variables, return them as States), with Flax's signatures.

`write` is the one in-place writer: it walks the node and runs its program
back onto the node's own objects with the new leaves (as the transforms
commit); `follow`/`target_at`/`slot_for`/`set_child_at` find and set what a path
leads to.
"""

from __future__ import annotations

import typing as tp

from collections.abc import Hashable, Mapping

from nnxfn.core import errors
from nnxfn.core import filters as filterlib
from nnxfn.core.flatstate import FlatState, ensure_state
from nnxfn.core.graph import flat_leaves, flatten_graph, path_order
from nnxfn.core.kinds import children_of
from nnxfn.core.program import commit_into
from nnxfn.core.registry import lookup
from nnxfn.core.state import State, partition_pairs
from nnxfn.core.variable_like import VariableLike
from nnxfn.core.walker import walk_graph

Path = tuple[tp.Hashable, ...]

# Other types `update` accepts as a state, and how to read their State (filled by
# the layers above: `interop` registers its `PytreeView`).
_STATE_READERS: dict[type, tp.Callable[[tp.Any], State]] = {}


def register_state_reader(cls: type, read: tp.Callable[[tp.Any], State]) -> None:
    """Let `update(node, x)` take instances of `cls` as states: `read(x)` is the State."""
    _STATE_READERS[cls] = read


def update(node: object, state: object, /, *states: object) -> None:
    """Write the states' values into `node` in place (see `write`).

    The states may be States, nested dicts, FlatStates or a type registered
    with `register_state_reader`; a Variable root takes exactly one Variable
    or value."""
    all_states = tuple(_read_state(s) for s in (state, *states))
    if isinstance(node, VariableLike):
        given = [s for s in all_states if not isinstance(s, Mapping) or len(s)]
        if len(given) != 1 or isinstance(given[0], Mapping):
            raise ValueError(
                f"update: a Variable root takes exactly one Variable or value, got {all_states!r}"
            )
        write(node, {(): given[0]})
        return
    write(node, flat_leaves(to_state(s) for s in all_states))


def _read_state(state: object) -> object:
    read = _STATE_READERS.get(type(state))
    return state if read is None else read(state)


def to_state(state: object) -> State:
    """`state` as a State (from a State, FlatState or nested mapping); TypeError otherwise."""
    if type(state) is State:
        return state
    if isinstance(state, (FlatState, Mapping)):
        return ensure_state(state)
    raise TypeError(f"merge/update: expected a State or a mapping, got {type(state).__name__}")


def write(node: object, flat: tp.Mapping[Path, tp.Any]) -> None:
    """Write `flat` ({path: value or Variable}) into the graph `node` in place:
    the one in-place writer (the transforms commit through the same
    `program.commit_into`).

    `node` is walked once and unflattened onto its own objects with the given
    leaves in place of its own: Variables get their value (and metadata) set;
    lists and dicts are edited in place; tuples and foreign pytrees with a
    changed leaf are rebuilt and set on their parent; untouched ones stay. A
    path that is not a leaf of the walk (a new attribute, a raw array replaced
    by a Variable, the second path of a shared Variable) is set on its parent
    afterwards. Every path is checked before anything is written.
    """
    paths: list = []
    objects: list = []
    graphdef, _, leaves = walk_graph(node, copy=False, paths=paths, objects=objects)
    position = {p: i for i, p in enumerate(paths)}
    where = {id(leaf): i for i, leaf in enumerate(leaves) if isinstance(leaf, VariableLike)}
    new = list(leaves)
    later = []  # (parent, key, value) set on their parent after the walk's leaves
    for path, value in flat.items():
        if type(node) is tuple and path:  # the root tuple itself cannot change
            child = target_at(node, path[:1])
            if child is not MISSING and not _in_place(child):
                raise ValueError(errors.update_in_tuple(path[:1]))
        i = position.get(path)
        if i is None or (isinstance(value, VariableLike) and not isinstance(leaves[i], VariableLike)):
            target = target_at(node, path)
            if isinstance(target, VariableLike) and id(target) in where:  # a shared Variable
                i = where[id(target)]
            else:
                later.append(slot_for(node, path, value))
                continue
        old = leaves[i]
        if (
            isinstance(value, VariableLike)
            and isinstance(old, VariableLike)
            and not isinstance(value, type(old))
        ):
            value = value.raw_value  # another Variable type: its value only
        new[i] = value
    out = commit_into(graphdef, new, dict(enumerate(objects)), current=node).root
    if out is not node and type(node) is list:
        node[:] = out
    elif out is not node and type(node) is dict:
        node.clear()
        node.update(out)
    for parent, key, value in later:
        set_child_at(parent, key, value)


MISSING = object()


def _in_place(x: object) -> bool:
    """Whether `update` changes `x` without replacing it."""
    return isinstance(x, (VariableLike, list, dict)) or lookup(type(x)) is not None


def follow(node: object, path: Path) -> tuple[object, int]:
    """(what `path` leads to in `node` now, how many of its keys were followed):
    `MISSING` at the first key that is absent or that goes on below a Variable."""
    for depth, key in enumerate(path):
        node = dict(children_of(node)).get(key, MISSING)
        if node is MISSING or (isinstance(node, VariableLike) and depth < len(path) - 1):
            return MISSING, depth
    return node, len(path)


def target_at(node: object, path: Path) -> tp.Any:
    """What `path` leads to in `node` now, or `MISSING`."""
    return follow(node, path)[0]


def slot_for(node: object, path: Path, value: object) -> tuple[object, Hashable, object]:
    """(parent, key, value) to set `value` at `path`, whose parent must be a graph
    node, list or dict; raises (naming the path) otherwise."""
    if not path:
        raise ValueError(errors.update_missing_node(path))
    parent, depth = follow(node, path[:-1])
    if parent is MISSING:
        raise ValueError(errors.update_missing_node(path[: depth + 1]))
    if isinstance(parent, VariableLike):
        raise ValueError(errors.update_missing_node(path[:-1]))
    if type(parent) is tuple:
        raise ValueError(errors.update_in_tuple(path))
    if not _in_place(parent):
        raise ValueError(errors.update_missing_node(path))
    if isinstance(value, VariableLike):  # a fresh Variable: the State stays unshared
        value = type(value).from_parts(value.raw_value, value.metadata_items())
    return parent, path[-1], value


def set_child_at(parent: tp.Any, key: tp.Any, value: tp.Any) -> None:
    """Set child `key` of a graph node, list or dict."""
    impl = lookup(type(parent))
    if impl is not None:
        impl.set_child(parent, key, value)
    else:
        parent[key] = value


def pop(
    node: object, *filters: filterlib.Filter, graph: bool | None = None, graph_updates: bool | None = None
) -> tp.Any:
    """Remove the Variables matching `filters` from `node`; return them as State(s)."""
    _, pairs = flatten_graph(node, copy=False)
    states = partition_pairs(pairs, filters, exhaustive=False)
    # Find every parent before deleting anything (nothing changes on error),
    # then delete the last paths first so list indices do not shift.
    targets = []
    for s in states:
        for path, _ in s.flat_state():
            parent = target_at(node, path[:-1])
            impl: _Deletes | None = lookup(type(parent))
            if impl is None and type(parent) in (dict, list):
                impl = _IN_PLACE  # plain dicts and lists lose the entry in place
            if impl is None:
                raise ValueError(errors.cannot_pop(path))
            targets.append((path, parent, impl))
    for path, parent, impl in sorted(targets, key=lambda t: path_order(t[0]), reverse=True):
        impl.del_child(parent, path[-1])
    return states[0] if len(states) == 1 else states


class _Deletes(tp.Protocol):
    def del_child(self, node: object, key: object, /) -> None: ...


class _InPlace:
    @staticmethod
    def del_child(container: tp.Any, key: tp.Any) -> None:
        del container[key]


_IN_PLACE = _InPlace()


def graph_pop(node: object, filters: tuple[filterlib.Filter, ...]) -> tuple[State, ...]:
    """`pop` with the filters as a tuple, always returning a tuple of States."""
    if not filters:
        return ()
    popped = pop(node, *filters)
    return popped if len(filters) > 1 else (popped,)
