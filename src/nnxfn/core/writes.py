"""The facade's writes: `update` (values into an existing graph, in place)
and `pop` (remove Variables, return them as States)."""

from __future__ import annotations

import typing as tp

from nnxfn.core import errors
from nnxfn.core import filters as filterlib
from nnxfn.core.graph import _flat_leaves, _partition, _path_order, flatten
from nnxfn.core.kinds import children_of
from nnxfn.core.program import commit_into
from nnxfn.core.registry import lookup
from nnxfn.core.variable_like import VariableLike
from nnxfn.core.walker import walk_graph

Path = tuple[tp.Any, ...]


def update(node: tp.Any, *states: tp.Any) -> None:
    """Write the states' leaves into `node` in place (see `write`)."""
    write(node, _flat_leaves(states))


def write(node: tp.Any, flat: tp.Mapping[Path, tp.Any]) -> None:
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
            child = _target(node, path[:1])
            if child is not _MISSING and not _in_place(child):
                raise ValueError(errors.update_in_tuple(path[:1]))
        i = position.get(path)
        if i is None or (isinstance(value, VariableLike) and not isinstance(leaves[i], VariableLike)):
            target = _target(node, path)
            if isinstance(target, VariableLike) and id(target) in where:  # a shared Variable
                i = where[id(target)]
            else:
                later.append(_place(node, path, value))
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
        _set(parent, key, value)


_MISSING = object()


def _in_place(x: tp.Any) -> bool:
    """Whether `update` changes `x` without replacing it."""
    return isinstance(x, (VariableLike, list, dict)) or lookup(type(x)) is not None


def _follow(node: tp.Any, path: Path) -> tuple[tp.Any, int]:
    """(what `path` leads to in `node` now, how many of its keys were followed):
    `_MISSING` at the first key that is absent or that goes on below a Variable."""
    for depth, key in enumerate(path):
        node = dict(children_of(node)).get(key, _MISSING)
        if node is _MISSING or (isinstance(node, VariableLike) and depth < len(path) - 1):
            return _MISSING, depth
    return node, len(path)


def _target(node: tp.Any, path: Path) -> tp.Any:
    """What `path` leads to in `node` now, or _MISSING."""
    return _follow(node, path)[0]


def _place(node: tp.Any, path: Path, value: tp.Any) -> tuple:
    """(parent, key, value) to set `value` at `path`, whose parent must be a graph
    node, list or dict; raises (naming the path) otherwise."""
    if not path:
        raise ValueError(errors.update_missing_node(path))
    parent, depth = _follow(node, path[:-1])
    if parent is _MISSING:
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


def _set(parent: tp.Any, key: tp.Any, value: tp.Any) -> None:
    impl = lookup(type(parent))
    if impl is not None:
        impl.set_child(parent, key, value)
    else:
        parent[key] = value


def pop(node: tp.Any, *filters: filterlib.Filter) -> tp.Any:
    """Remove the Variables matching `filters` from `node`; return them as State(s)."""
    _, pairs = flatten(node, copy=False)
    states = _partition(pairs, filters, exhaustive=False)
    # Find every parent before deleting anything (nothing changes on error),
    # then delete the last paths first so list indices do not shift.
    targets = []
    for s in states:
        for path, _ in s.flat_state():
            parent = _target(node, path[:-1])
            impl = lookup(type(parent))
            if impl is None and type(parent) in (dict, list):
                impl = _IN_PLACE  # plain dicts and lists lose the entry in place
            if impl is None:
                raise ValueError(errors.cannot_pop(path))
            targets.append((path, parent, impl))
    for path, parent, impl in sorted(targets, key=lambda t: _path_order(t[0]), reverse=True):
        impl.del_child(parent, path[-1])
    return states[0] if len(states) == 1 else states


class _InPlace:
    @staticmethod
    def del_child(container: tp.Any, key: tp.Any) -> None:
        del container[key]


_IN_PLACE = _InPlace()
