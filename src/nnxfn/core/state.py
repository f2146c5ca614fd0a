"""State: an immutable nested mapping from paths to leaves.

Keys are attribute names (str) or list indices (int). Leaves are arrays or
boxed leaves (Variables, themselves pytrees of one array). A State is a JAX
pytree, so `jax.tree.map`, `jax.jit` and optax work on it directly.
"""

from __future__ import annotations

import typing as tp
from collections.abc import Mapping
from types import MappingProxyType

import jax

from nnxfn.core import errors, filters as filterlib
from nnxfn.core.graphdef import GraphDef
from nnxfn.core.registry import key_order
from nnxfn.core.unmatched import warn_unmatched
from nnxfn.core.variable_like import VariableLike

Key = tp.Hashable  # an attribute name, a list index or a dict key
Path = tuple[Key, ...]
Leaf = tp.Any  # an array, a Variable or any other leaf


class State(Mapping):
    """Immutable nested mapping; `state['a']['b']` or `state.a.b`."""

    # `_nnx_flat`, set only on the States that `split` returns: a `SplitLeaves`
    # (see `set_split_leaves`), so `merge(graphdef, state)` takes leaves by
    # position. A State is immutable, so any other State (filtered, merged,
    # mapped, unpickled) simply has none and `merge` goes by paths.
    __slots__ = ("_mapping", "_nnx_flat")

    def __init__(self, mapping: Mapping | tp.Iterable = (), /):
        items = mapping.items() if isinstance(mapping, Mapping) else mapping
        built = {}
        for k, v in items:
            if isinstance(v, Mapping) and not isinstance(v, State):
                v = State(v)
            built[k] = v
        object.__setattr__(self, "_mapping", built)

    @classmethod
    def _raw(cls, mapping: dict) -> State:
        """Wrap a dict whose nested values are already States (no copy)."""
        state = _new(cls)
        _set_mapping(state, mapping)
        return state

    # -- mapping protocol -------------------------------------------------
    def __getitem__(self, key: Key) -> Leaf:
        return self._mapping[key]

    def __iter__(self) -> tp.Iterator:
        return iter(self._mapping)

    def __len__(self) -> int:
        return len(self._mapping)

    def __contains__(self, key: object) -> bool:
        return key in self._mapping

    def __getattr__(self, name: str) -> Leaf:
        if name == "_nnx_flat":  # unset slot: not made by `split`
            return None
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self._mapping[name]
        except KeyError:
            raise AttributeError(f"State has no key {name!r}; its keys are {list(self._mapping)}") from None

    def __setattr__(self, name: str, value: object) -> None:
        raise TypeError(_immutable(name))

    def __setitem__(self, key: Key, value: object) -> None:
        raise TypeError(_immutable(key))

    def __delitem__(self, key: Key) -> None:
        raise TypeError(_immutable(key))

    def __eq__(self, other: object) -> bool:
        """Compared as a Mapping (Flax): equal keys, and values equal by `==`
        (an empty State equals `{}`; a State is never hashable)."""
        if not isinstance(other, Mapping):
            return NotImplemented
        return self is other or self._mapping == dict(other.items())

    __hash__ = None  # type: ignore[assignment]  # unhashable, as dict: mypy wants a method here

    def __reduce__(self):
        return (State, (self._mapping,))

    # -- flat views -------------------------------------------------------
    def flat_state(self) -> FlatState:
        """Every (path, leaf) pair, in canonical key order."""
        out: list[tuple[Path, Leaf]] = []
        _flatten_into(self, (), out)
        return FlatState.from_sorted_keys_values(tuple(k for k, _ in out), [v for _, v in out])

    @property
    def raw_mapping(self) -> Mapping:
        """The nested mapping itself, read-only (a State is immutable)."""
        return MappingProxyType(self._mapping)

    def map(self, f: tp.Callable[[Path, Leaf], Leaf]) -> State:
        """A new State with every leaf replaced by `f(path, leaf)` (`nnx.map_state`)."""
        return State.from_flat_path([(p, f(p, v)) for p, v in self.flat_state()])

    def __sub__(self, other: Mapping) -> State:
        """The leaves whose paths are not in `other` (`nnx.statelib.diff`)."""
        if not other:
            return self
        known = set((other if isinstance(other, State) else State(other)).flat_dict())
        return State.from_flat_path([(p, v) for p, v in self.flat_state() if p not in known])

    def flat_dict(self) -> dict[Path, Leaf]:
        return dict(self.flat_state())

    @classmethod
    def from_flat_path(cls, pairs: tp.Iterable[tuple[Path, Leaf]] | Mapping) -> State:
        """Build a State from (path, leaf) pairs (or a {path: leaf} dict)."""
        if isinstance(pairs, Mapping):
            pairs = pairs.items()
        root: dict = {}
        for path, leaf in pairs:
            node = root
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = leaf
        return cls(root)

    def leaves(self) -> list[Leaf]:
        return [leaf for _, leaf in self.flat_state()]

    # -- conversions ------------------------------------------------------
    def to_pure_dict(self) -> dict:
        """Nested plain dicts of raw values (Variables unwrapped).

        This is the stable on-disk layout: string/int keys as in the paths.
        """
        return {k: v.to_pure_dict() if isinstance(v, State) else _unbox(v) for k, v in self._mapping.items()}

    def replace_by_pure_dict(
        self, pure_dict: Mapping, replace_fn: tp.Callable[[Leaf, Leaf], Leaf] | None = None
    ) -> State:
        """A new State with the leaves replaced by the values in `pure_dict`.

        State is immutable: this returns the new State (it does not modify
        `self`). Keys of `pure_dict` that are not in the State raise.
        """
        flat = self.flat_dict()
        new = dict(flat)
        for given, value in _flat_pure(pure_dict, ()):
            path = _match_path(given, flat)
            if path is None:
                raise KeyError(errors.unknown_pure_path(given))
            old = flat[path]
            if replace_fn is not None:
                new[path] = replace_fn(old, value)
            elif isinstance(old, VariableLike):
                new[path] = type(old).from_parts(value, old.metadata_items())
            else:
                new[path] = value
        return State.from_flat_path(new)

    # -- filtering --------------------------------------------------------
    def filter(self, *filters: filterlib.Filter) -> State | tuple[State, ...]:
        return filter_state(self, *filters)

    def split(self, *filters: filterlib.Filter) -> State | tuple[State, ...]:
        return split_state(self, *filters)

    @staticmethod
    def merge(*states: State) -> State:
        return merge_state(*states)

    def __or__(self, other: State) -> State:
        return merge_state(self, other)

    # -- display ----------------------------------------------------------
    def __repr__(self) -> str:
        return "State(" + _repr_mapping(self, 1) + ")"


_new = object.__new__
_set_mapping = State.__dict__["_mapping"].__set__
_set_flat = State.__dict__["_nnx_flat"].__set__


class SplitGroup:
    """Shared by the States of one filtered `split`: how many there are
    (compared by identity: States of another split are of another group)."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size


class SplitLeaves(tp.NamedTuple):
    """What a State made by `split` remembers so `merge` can take its
    leaves by position instead of by path."""

    graphdef: GraphDef
    leaves: list[Leaf]  # this State's leaves, in GraphDef order
    group: SplitGroup | None  # None: the only State of an unfiltered split
    number: int  # this State's place in its group
    positions: list[int] | None  # the GraphDef leaf position of each of `leaves` (in a group)


def set_split_leaves(state: State, record: SplitLeaves | None) -> None:
    """Attach (or, with None, drop) what `split` knows about `state`'s leaves."""
    _set_flat(state, record)


def split_leaves(state: object) -> SplitLeaves | None:
    """What `split` attached to `state` (see `set_split_leaves`), or None."""
    if type(state) is not State:
        return None
    found: SplitLeaves | None = state._nnx_flat
    return found


def wrap(mapping: dict) -> State:
    """`State._raw(mapping)` without the method call (hot loops)."""
    state = _new(State)
    _set_mapping(state, mapping)
    return state


def _immutable(key: object) -> str:
    return (
        f"State is immutable, cannot set {key!r}. Build a new one: "
        "`state | nnx.State({...})`, `state.replace_by_pure_dict(d)`, or "
        "`jax.tree.map(f, state)`; write into a model with `nnx.update(model, state)`."
    )


def _unbox(v: Leaf) -> Leaf:
    return v.raw_value if isinstance(v, VariableLike) else v


def _flatten_into(state: State, prefix: Path, out: list) -> None:
    """Append the (path, leaf) pairs of `state`, depth first (no recursion limit)."""
    stack = [(iter(sorted(state._mapping, key=key_order)), state._mapping, prefix)]
    while stack:
        keys, mapping, prefix = stack[-1]
        for k in keys:
            v = mapping[k]
            if isinstance(v, State):
                stack.append((iter(sorted(v._mapping, key=key_order)), v._mapping, prefix + (k,)))
                break
            out.append((prefix + (k,), v))
        else:
            stack.pop()


def _flat_pure(d: Mapping, prefix: Path) -> tp.Iterator[tuple[Path, Leaf]]:
    for k, v in d.items():
        if isinstance(v, Mapping):
            yield from _flat_pure(v, prefix + (k,))
        else:
            yield prefix + (k,), v


def _match_path(path: Path, flat: Mapping) -> Path | None:
    """Find `path` in `flat`, allowing str digits for int keys (JSON/orbax)."""
    if path in flat:
        return path
    alt = tuple(int(k) if isinstance(k, str) and k.isdigit() else k for k in path)
    return alt if alt in flat else None


def _repr_mapping(state: State, indent: int) -> str:
    if not state._mapping:
        return "{}"
    pad = "  " * indent
    lines = []
    for k in sorted(state._mapping, key=key_order):
        v = state._mapping[k]
        if isinstance(v, State):
            body = _repr_mapping(v, indent + 1)
        else:
            body = _leaf_repr(v)
        lines.append(f"{pad}{k!r}: {body}")
    return "{\n" + ",\n".join(lines) + "\n" + "  " * (indent - 1) + "}"


def _leaf_repr(v: object) -> str:
    if isinstance(v, VariableLike):
        return f"{type(v).__name__}(value={_leaf_repr(v.raw_value)})"
    shape, dtype = getattr(v, "shape", None), getattr(v, "dtype", None)
    if shape is not None and dtype is not None:
        return f"Array(shape={tuple(shape)}, dtype={dtype})"
    return repr(v)


# -- free functions -------------------------------------------------------
def partition(
    paths: tp.Sequence[Path], leaves: tp.Sequence, filters: tuple, exhaustive: bool
) -> list[list[int]]:
    """Positions of the leaves matching each filter (the first that matches wins).
    With `exhaustive`, a leaf matching none is an error naming its path."""
    preds = filterlib.check_filters(filters)
    buckets: list[list[int]] = [[] for _ in preds]
    unmatched = []
    for pos, (path, leaf) in enumerate(zip(paths, leaves)):
        for i, pred in enumerate(preds):
            if pred(path, leaf):
                buckets[i].append(pos)
                break
        else:
            unmatched.append(path)
    if exhaustive and unmatched:
        raise ValueError(errors.non_exhaustive_split(unmatched))
    if not all(buckets):  # a typo'd string/path/regex filter: warn with the closest paths
        warn_unmatched(filters, buckets, paths, leaves)
    return buckets


def partition_pairs(
    pairs: tp.Sequence[tuple[Path, Leaf]], filters: tuple, exhaustive: bool
) -> tuple[State, ...]:
    """One State per filter from (path, leaf) pairs; see `partition`."""
    paths = [p for p, _ in pairs]
    leaves = [leaf for _, leaf in pairs]
    return tuple(
        State.from_flat_path([pairs[i] for i in bucket])
        for bucket in partition(paths, leaves, filters, exhaustive)
    )


def filter_state(state: State, *filters: filterlib.Filter) -> State | tuple[State, ...]:
    """States holding the leaves matching each filter (non-exhaustive)."""
    states = partition_pairs(state.flat_state(), filters, exhaustive=False)
    return states[0] if len(states) == 1 else states


def split_state(state: State, *filters: filterlib.Filter) -> State | tuple[State, ...]:
    """Partition the leaves among the filters; every leaf must match one."""
    if not filters:
        return state
    states = partition_pairs(state.flat_state(), filters, exhaustive=True)
    return states[0] if len(states) == 1 else states


def merge_state(*states: State, cls: type | None = None) -> State:
    """One State with the leaves of all; later states win on equal paths.
    `cls` (Flax's result class) may only be `State`: nnxfn has one State type."""
    if cls is not None and cls is not State:
        raise TypeError(f"merge_state: cls must be nnx.State, got {cls!r}.")
    flat: dict = {}
    for s in states:
        flat.update(s.flat_state())
    return State.from_flat_path(flat)


def state_children_with_keys(
    state: State,
) -> tuple[list[tuple[jax.tree_util.DictKey, Leaf]], tuple[Key, ...]]:
    """A State's pytree flatten with keys: (DictKey, child) pairs in key order, and the keys."""
    keys = tuple(sorted(state._mapping, key=key_order))
    children = [(jax.tree_util.DictKey(k), state._mapping[k]) for k in keys]
    return children, keys


def state_children(state: State) -> tuple[list[Leaf], tuple[Key, ...]]:
    """A State's pytree flatten: its children in key order, and the keys."""
    keys = tuple(sorted(state._mapping, key=key_order))
    return [state._mapping[k] for k in keys], keys


def state_from_children(keys: tuple[Key, ...], children: tp.Iterable[Leaf]) -> State:
    """The inverse of `state_children`."""
    return State._raw(dict(zip(keys, children)))


jax.tree_util.register_pytree_with_keys(State, state_children_with_keys, state_from_children, state_children)


# -- FlatState ------------------------------------------------------------------------------
def _path_key(path: Path) -> tuple:
    return tuple(key_order(k) for k in path)


class FlatState(tp.Sequence[tuple[Path, Leaf]]):
    """An ordered sequence of `(path, leaf)` pairs; `flat[i]` is a pair."""

    __slots__ = ("_keys", "_values")

    def __init__(self, items: tp.Iterable[tuple[Path, Leaf]] = (), /, *, sort: bool = True):
        items = list(items.items() if isinstance(items, Mapping) else items)
        if sort:
            items.sort(key=lambda kv: _path_key(kv[0]))
        self._keys: tuple[Path, ...] = tuple(tuple(k) for k, _ in items)
        self._values: list[Leaf] = [v for _, v in items]

    @staticmethod
    def from_sorted_keys_values(keys: tuple[Path, ...], values: list, /) -> FlatState:
        flat = object.__new__(FlatState)
        flat._keys, flat._values = tuple(keys), list(values)
        return flat

    @property
    def paths(self) -> tuple[Path, ...]:
        return self._keys

    @property
    def leaves(self) -> list[Leaf]:
        return self._values

    @tp.overload
    def __getitem__(self, index: int) -> tuple[Path, Leaf]: ...
    @tp.overload
    def __getitem__(self, index: slice) -> FlatState: ...
    def __getitem__(self, index: int | slice) -> tuple[Path, Leaf] | FlatState:
        if isinstance(index, slice):
            return FlatState.from_sorted_keys_values(self._keys[index], self._values[index])
        return self._keys[index], self._values[index]

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> tp.Iterator[tuple[Path, Leaf]]:
        return iter(zip(self._keys, self._values))

    def __repr__(self) -> str:
        return f"FlatState({list(self)!r})"

    def to_nested_state(self) -> State:
        return State.from_flat_path(self)

    def filter(self, *filters: filterlib.Filter) -> FlatState | tuple[FlatState, ...]:
        """One FlatState per filter (leaves matching none are dropped)."""
        parts = self._partition(filters, exhaustive=False)
        return parts[0] if len(parts) == 1 else parts

    def split(self, *filters: filterlib.Filter) -> FlatState | tuple[FlatState, ...]:
        """One FlatState per filter; every leaf must match one (`...` last)."""
        parts = self._partition(filters, exhaustive=True)
        return parts[0] if len(parts) == 1 else parts

    def _partition(self, filters: tuple, exhaustive: bool) -> tuple[FlatState, ...]:
        buckets = partition(self._keys, self._values, filters, exhaustive)
        return tuple(
            FlatState.from_sorted_keys_values(tuple(self._keys[i] for i in b), [self._values[i] for i in b])
            for b in buckets
        )

    @staticmethod
    def merge(first: tp.Iterable, /, *rest: tp.Iterable) -> FlatState:
        """One FlatState with the pairs of all (later ones win on equal paths)."""
        if not rest and isinstance(first, FlatState):
            return first
        merged: dict[Path, Leaf] = {}
        for flat in (first, *rest):
            merged.update((tuple(k), v) for k, v in flat)
        return FlatState(merged.items(), sort=True)


jax.tree_util.register_pytree_node(
    FlatState,
    lambda f: (f._values, f._keys),
    lambda keys, values: FlatState.from_sorted_keys_values(keys, list(values)),
)
