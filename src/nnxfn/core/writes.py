"""The facade's writes: `update` (values into an existing graph, in place)
and `pop` (remove Variables, return them as States)."""

from __future__ import annotations

import typing as tp

from nnxfn.core import errors
from nnxfn.core import filters as filterlib
from nnxfn.core.graph import _flat_leaves, _partition, _path_order, flatten
from nnxfn.core.kinds import _CONTAINERS, _container_children, _pytree_children, children_of
from nnxfn.core.registry import lookup
from nnxfn.core.state import State
from nnxfn.core.variable_like import VariableLike

Path = tuple[tp.Any, ...]
_MISSING = object()


def update(node: tp.Any, *states: tp.Any) -> None:
    """Write the states' leaves into `node` in place.

    Variables get their value (and metadata) set; raw arrays and missing
    attributes are (re)bound on their parent; immutable containers and
    foreign pytrees on the way are rebuilt and set on their parent.
    """
    nested = State.from_flat_path(_flat_leaves(states))
    _update_graph_node(node, nested, ())


def _update_graph_node(node: tp.Any, sub: State, path: Path) -> None:
    """Update a graph node, or a root list/tuple/dict of them (`update((model, opt), s)`)."""
    impl = lookup(type(node))
    if impl is None and type(node) in _CONTAINERS:
        current = dict(_container_children(node))
        set_child = _container_setter(node, path)
        if type(node) is tuple:  # check first: nothing is half-applied
            for key in sub:
                child = current.get(key, _MISSING)
                if not isinstance(sub[key], State) and not isinstance(child, VariableLike):
                    raise ValueError(errors.update_in_tuple(path + (key,)))
    elif impl is None:
        raise ValueError(errors.update_missing_node(path))
    else:
        current = dict(impl.children(node))
        set_child = impl.set_child
    for key in sub:
        child = current.get(key, _MISSING)
        new = _update_value(child, sub[key], path + (key,))
        if new is not child:
            set_child(node, key, new)


def _container_setter(node: tp.Any, path: Path) -> tp.Callable:
    def set_item(container: tp.Any, key: tp.Any, value: tp.Any) -> None:
        if type(container) is tuple:
            raise ValueError(errors.update_in_tuple(path + (key,)))
        container[key] = value

    return set_item


def _update_value(child: tp.Any, value: tp.Any, path: Path, foreign: bool = False) -> tp.Any:
    if isinstance(value, State):
        if child is _MISSING:
            raise ValueError(errors.update_missing_node(path))
        if lookup(type(child)) is not None or (not path and type(child) in _CONTAINERS):
            _update_graph_node(child, value, path)
            return child
        return _rebuild(child, value, path, foreign)
    if isinstance(child, VariableLike):
        if isinstance(value, VariableLike):
            child.set_raw(value.raw_value)
            meta = value.metadata_items()
            if meta != child.metadata_items():
                child.set_metadata_items(meta)
        else:
            child.set_raw(value)
        return child
    if isinstance(value, VariableLike) and foreign:  # boxed only in the State (BoxedDef)
        return value.raw_value
    if isinstance(value, VariableLike):  # a fresh Variable: the State stays unshared
        return type(value).from_parts(value.raw_value, value.metadata_items())
    return value


def _rebuild(container: tp.Any, sub: State, path: Path, foreign: bool = False) -> tp.Any:
    """A copy of a list/tuple/dict/pytree with some children updated."""
    if type(container) in _CONTAINERS:
        pairs = _container_children(container)
        treedef = None
    else:
        found = _pytree_children(container)
        if found is None:
            raise ValueError(errors.update_missing_node(path))
        treedef, pairs = found
        foreign = True  # arrays below a foreign pytree stay raw arrays
    known = {k for k, _ in pairs}
    extra = [k for k in sub if k not in known]
    if extra:
        raise ValueError(errors.update_missing_node(path + (extra[0],)))
    values = [_update_value(v, sub[k], path + (k,), foreign) if k in sub else v for k, v in pairs]
    if treedef is not None:
        return treedef.unflatten(values)
    if type(container) is dict:
        return {k: v for (k, _), v in zip(pairs, values)}
    if type(container) is list:
        container[:] = values
        return container
    return tuple(values)


def pop(node: tp.Any, *filters: filterlib.Filter) -> tp.Any:
    """Remove the Variables matching `filters` from `node`; return them as State(s)."""
    _, pairs = flatten(node, copy=False)
    states = _partition(pairs, filters, exhaustive=False)
    # Find every parent before deleting anything (nothing changes on error),
    # then delete the last paths first so list indices do not shift.
    targets = []
    for s in states:
        for path, _ in s.flat_state():
            parent = _get_path(node, path[:-1])
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


def _get_path(node: tp.Any, path: Path) -> tp.Any:
    for key in path:
        node = dict(children_of(node))[key]
    return node
