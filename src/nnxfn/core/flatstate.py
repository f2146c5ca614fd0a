"""Flat views of a State and the free state helpers of Flax's `statelib`.

`FlatState` is an ordered sequence of `(path, leaf)` pairs (a JAX pytree whose
children are the leaves). The free functions (`to_flat_state`,
`from_flat_state`, `to_pure_dict`, `replace_by_pure_dict`, `map_state`,
`restore_int_paths`, `diff`) are built on `State`'s own methods.

>>> s = from_flat_state([(("a", "b"), 1), (("c",), 2)])
>>> to_flat_state(s).paths
(('a', 'b'), ('c',))
"""

from __future__ import annotations

import typing as tp
from collections.abc import Mapping


from nnxfn.core import filters as filterlib
from nnxfn.core.state import FlatState as FlatState, State
from nnxfn.core.variable_like import VariableLike

Key = tp.Hashable
Path = tuple[Key, ...]
Leaf = tp.Any  # an array, a Variable or any other leaf
# What the free functions accept as a state: a State, a nested mapping, a
# FlatState, (path, leaf) pairs or a GraphState.
StateLike = tp.Any


def ensure_state(state: StateLike) -> State:
    """`state` as a State (a State, a nested mapping, or (path, leaf) pairs)."""
    if isinstance(state, State):
        return state
    if isinstance(state, FlatState):
        return from_flat_state(state)
    if isinstance(state, Mapping):
        inner = getattr(state, "_state", None)
        if isinstance(inner, State):
            return inner  # a GraphState
        return State(state)
    raise TypeError(f"expected a State or a mapping, got {type(state).__name__}")


def to_flat_state(state: StateLike) -> FlatState:
    """The `(path, leaf)` pairs of a State, in canonical path order."""
    pairs = ensure_state(state).flat_state()
    return FlatState.from_sorted_keys_values(tuple(p for p, _ in pairs), [v for _, v in pairs])


def from_flat_state(
    flat_state: tp.Mapping[Path, Leaf] | tp.Iterable[tuple[Path, Leaf]], *, cls: type = State
) -> State:
    """A State from `(path, leaf)` pairs or a `{path: leaf}` mapping."""
    return State.from_flat_path(flat_state) if cls is State else cls(State.from_flat_path(flat_state))


def to_pure_dict(state: StateLike, extract_fn: tp.Callable[[Leaf], Leaf] | None = None) -> dict:
    """Nested plain dicts of the raw values (Variables unwrapped)."""
    state = ensure_state(state)
    if extract_fn is None:
        return state.to_pure_dict()
    return _nest({p: extract_fn(v) for p, v in state.flat_state()})


def _nest(flat: Mapping[Path, Leaf]) -> dict:
    root: dict = {}
    for path, value in flat.items():
        node = root
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return root


def replace_by_pure_dict(
    state: StateLike, pure_dict: Mapping, replace_fn: tp.Callable[[Leaf, Leaf], Leaf] | None = None
) -> State:
    """Put the values of `pure_dict` into `state`'s leaves; returns the new State.

    State is immutable, so the State itself is not changed, but its Variables
    are: each one receives its new value in place (as in Flax, code that
    ignores the return value and then calls `nnx.update(model, state)` works).
    Keys given as strings of digits match integer keys (checkpoint layouts).
    """
    new = ensure_state(state).replace_by_pure_dict(pure_dict, replace_fn)
    old_flat = ensure_state(state).flat_dict()
    for path, leaf in new.flat_state():
        old = old_flat.get(path)
        if isinstance(old, VariableLike) and isinstance(leaf, VariableLike) and old is not leaf:
            old.set_raw(leaf.raw_value)
            if old.metadata_items() != leaf.metadata_items():
                old.set_metadata_items(leaf.metadata_items())
    return new


def map_state(f: tp.Callable[[Path, Leaf], Leaf], state: StateLike) -> State:
    """A new State with every leaf replaced by `f(path, leaf)`."""
    return ensure_state(state).map(f)


def restore_int_paths(pure_dict: Mapping) -> dict:
    """A copy of a nested dict whose digit-string keys become ints (as
    checkpoint formats store list indices)."""

    def fix(key: Key) -> Key:
        if isinstance(key, str):
            try:
                return int(key)
            except ValueError:
                return key
        return key

    def walk(d: Mapping) -> dict:
        return {fix(k): walk(v) if isinstance(v, Mapping) else v for k, v in d.items()}

    return walk(pure_dict)


def create_path_filters(state: StateLike) -> dict:
    """`{PathIn(*paths): value}` grouping the paths of `state` by leaf value (a
    Variable's value): the mapping form of a State of per-leaf values, as
    `StateAxes`/`StateSharding` take it.

    >>> filters = create_path_filters(State({"a": 0, "b": {"c": 0, "d": 1}}))
    >>> [(f(("a",), None), f(("b", "c"), None), value) for f, value in filters.items()]
    [(True, True, 0), (False, False, 1)]
    """
    groups: dict[Leaf, list[Path]] = {}
    for path, value in to_flat_state(state):
        if isinstance(value, VariableLike):
            value = tp.cast(Leaf, value).get_value()  # the facade's Variable
        groups.setdefault(value, []).append(path)
    return {filterlib.PathIn(*paths): value for value, paths in groups.items()}


def diff(state: StateLike, other: StateLike) -> State:
    """The leaves of `state` whose paths are not in `other`."""
    return ensure_state(state) - (ensure_state(other) if other else {})
