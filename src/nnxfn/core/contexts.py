"""Flax's low-level graph API: `flatten`/`unflatten` with reference maps, and the
split/merge/update contexts that let several splits share object identity.

- `RefMap` (object -> index) and `IndexMap` (index -> object) record which
  object got which GraphDef index.
- `flatten(node, ref_index=r)`: objects already in `r` are not walked again;
  the GraphDef refers to them by index (a `Ref`), so a second split of the same
  Module inside one `split_context` is just a reference.
- `flatten(..., ref_outer_index=o)` also records, for every object found in
  `o`, the index it had outside; `unflatten(..., outer_index_outer_ref=m)`
  then updates those outer objects in place instead of creating new ones.
  This is how a function that ran under `jax.jit` on fresh copies commits its
  changes (even swapped attributes and new cycles) back to the caller's objects.

Everything here is built on `graph.flatten_graph`/`graph.unflatten_graph`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import typing as tp

import jax

from nnxfn.core import filters as filterlib, refoutputs, treemode as _treemode
from nnxfn.core import treegraph as _treegraph
from nnxfn.core.graph import flatten_graph, unflatten_graph
from nnxfn.core.api import leaf_paths
from nnxfn.core.flatstate import FlatState, ensure_state
from nnxfn.core.graphdef import (
    ContainerDef,
    Record,
    GraphDef,
    NodeDef,
    PytreeDef,
    Ref,
    VariableDef,
)

from nnxfn.core.variable_like import VariableLike

Path = tuple[tp.Any, ...]
_T = tp.TypeVar("_T")


class RefMap(tp.MutableMapping[tp.Any, int]):
    """A mapping from objects (by identity) to their GraphDef index."""

    def __init__(self, mapping: tp.Mapping[tp.Any, int] | tp.Iterable = ()):
        self._mapping: dict[int, tuple[tp.Any, int]] = {}
        items = mapping.items() if isinstance(mapping, tp.Mapping) else mapping
        for obj, index in items:
            self[obj] = index

    @staticmethod
    def from_indexmap(indexmap: tp.Mapping[int, tp.Any]) -> RefMap:
        return RefMap((obj, index) for index, obj in indexmap.items())

    def __getitem__(self, obj: object) -> int:
        return self._mapping[id(obj)][1]

    def __setitem__(self, obj: object, index: int) -> None:
        self._mapping[id(obj)] = (obj, index)

    def __delitem__(self, obj: object) -> None:
        del self._mapping[id(obj)]

    def __contains__(self, obj: object) -> bool:
        return id(obj) in self._mapping

    def __iter__(self) -> tp.Iterator[tp.Any]:
        return (obj for obj, _ in self._mapping.values())

    def __len__(self) -> int:
        return len(self._mapping)

    @tp.overload
    def get(self, obj: object, /) -> int | None: ...
    @tp.overload
    def get(self, obj: object, /, default: int) -> int: ...
    @tp.overload
    def get(self, obj: object, /, default: _T) -> int | _T: ...
    def get(self, obj: object, /, default: object = None) -> object:
        entry = self._mapping.get(id(obj))
        return default if entry is None else entry[1]

    def items(self) -> list[tuple[tp.Any, int]]:  # type: ignore[override]  # a list: no per-key lookups
        return list(self._mapping.values())


class IndexMap(dict):
    """A mapping from GraphDef index to object."""

    @staticmethod
    def from_refmap(refmap: RefMap) -> IndexMap:
        return IndexMap((index, obj) for obj, index in refmap.items())


class OuterIndexedGraphDef(GraphDef):
    """A GraphDef that also records, for some of its objects, the index the
    same object had outside a transform (`outer_index`: ((index, outer), ...))."""

    __slots__ = ("outer_index",)
    outer_index: tuple[tuple[int, int], ...]

    def __hash__(self) -> int:
        return hash((GraphDef.__hash__(self), self.outer_index))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, OuterIndexedGraphDef)
            and self.outer_index == other.outer_index
            and GraphDef.__eq__(self, other)
        )

    def __reduce__(self):
        return (_rebuild_outer, (self.root, self.num_leaves, self.outer_index))


def _rebuild_outer(root: Record, num_leaves: int, outer: tuple) -> OuterIndexedGraphDef:
    graphdef = OuterIndexedGraphDef(root, num_leaves)
    graphdef.outer_index = outer
    return graphdef


jax.tree_util.register_static(OuterIndexedGraphDef)


# -- flatten / unflatten ---------------------------------------------------------------
def flatten(
    node: object,
    /,
    *,
    ref_index: RefMap | None = None,
    ref_outer_index: RefMap | None = None,
    with_paths: bool = True,
    copy: bool = True,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> tuple[GraphDef, FlatState | list]:
    """`graphdef, flat_state` (a FlatState of (path, leaf) pairs, or with
    `with_paths=False` the list of leaves). `ref_index` receives every object
    met, and every `jax.Ref` (objects already in it are referenced, not walked
    again). Variables are detached copies unless `copy=False`. In tree mode
    (`graph=False`, no reference maps) the GraphDef is Flax's tree-mode record
    and the leaves are the node's own Variables, in sorted path order."""
    _treemode.check_node(node, "flatten", graph)
    if _treemode.is_tree_mode(graph) and ref_index is None and ref_outer_index is None:
        tree_def, tree_pairs = _treegraph.flatten_tree_mode(node)
        paths, leaves = [p for p, _ in tree_pairs], [v for _, v in tree_pairs]
        if not with_paths:
            return tree_def, leaves
        return tree_def, FlatState.from_sorted_keys_values(tuple(paths), leaves)
    graphdef, pairs = _flatten_pairs(node, ref_index, ref_outer_index, copy, None)
    if not with_paths:  # the leaves in GraphDef order
        return graphdef, [leaf for _, leaf in pairs]
    return graphdef, FlatState(pairs, sort=True)


def _flatten_pairs(
    node: object,
    ref_index: RefMap | None,
    ref_outer_index: RefMap | None,
    copy: bool,
    known_refs: set[int] | None,
) -> tuple[GraphDef, list[tuple[Path, tp.Any]]]:
    """`flatten`'s GraphDef and (path, leaf) pairs in GraphDef order; with
    `known_refs` (an inner split of an update context) the values of Ref
    Variables become `NoUpdate`/`ArrayRefOutput` (see refoutputs)."""
    objects: list[object] = []
    graphdef, pairs = flatten_graph(node, copy=copy, objects=objects)
    if ref_index is None:
        ref_index = RefMap()
    if not len(ref_index) and ref_outer_index is None:
        for i, obj in enumerate(objects):
            ref_index[obj] = i
    else:
        graphdef, pairs = _reindex(graphdef, pairs, objects, ref_index, ref_outer_index)
    _index_refs(pairs, ref_index)
    if known_refs is not None:
        pairs = refoutputs.to_outputs(pairs, known_refs)
    return graphdef, pairs


def _index_refs(pairs: list, ref_index: RefMap) -> None:
    """Give every `jax.Ref` met (bare, or a Variable's value) an index too."""
    for _, leaf in pairs:
        ref = leaf.raw_value if isinstance(leaf, VariableLike) else leaf
        if isinstance(ref, jax.Ref) and ref not in ref_index:
            ref_index[ref] = len(ref_index)


def _reindex(
    graphdef: GraphDef, pairs: list, objects: list, ref_index: RefMap, ref_outer_index: RefMap | None
) -> tuple[GraphDef, list]:
    """Renumber the GraphDef's objects by `ref_index`; objects already there
    become references (their leaves are dropped)."""
    to_global: dict[int, int] = {}
    seen: set[int] = set()
    for i, obj in enumerate(objects):
        g = ref_index.get(obj)
        if g is None:
            g = ref_index[obj] = len(ref_index)
        else:
            seen.add(i)
        to_global[i] = g
    outer: dict[int, int] = {}
    cut: list[Path] = []

    def walk(d: object, path: Path) -> tp.Any:
        if isinstance(d, (NodeDef, VariableDef)):
            g = to_global[d.index]
            if d.index in seen:
                cut.append(path)
                return Ref(g)
            if ref_outer_index is not None:
                o = ref_outer_index.get(objects[d.index])
                if o is not None:
                    outer[g] = o
            if isinstance(d, VariableDef):
                return VariableDef(d.type, g, d.metadata)
            kids = tuple((k, walk(c, path + (k,))) for k, c in d.children)
            return NodeDef(d.type, g, d.static, kids)
        if isinstance(d, Ref):
            return Ref(to_global[d.index])
        if isinstance(d, ContainerDef):
            return ContainerDef(d.type, tuple((k, walk(c, path + (k,))) for k, c in d.children))
        if isinstance(d, PytreeDef):
            return PytreeDef(d.treedef, tuple((k, walk(c, path + (k,))) for k, c in d.children))
        return d

    root = walk(graphdef.root, ())
    cut_set = set(cut)
    kept = [(p, v) for p, v in pairs if not any(p[:n] in cut_set for n in range(len(p) + 1))]
    if ref_outer_index is None:
        return GraphDef(root, len(kept)), kept
    return _rebuild_outer(root, len(kept), tuple(sorted(outer.items()))), kept


def unflatten(
    graphdef: GraphDef,
    state: object,
    /,
    *,
    index_ref: dict | None = None,
    outer_index_outer_ref: tp.Mapping[int, tp.Any] | None = None,
    copy_variables: bool = False,
    copy: bool = True,
    recreate_variables: bool = True,
) -> tp.Any:
    """Build the object graph of `graphdef` from its state (a State, FlatState,
    nested dict or list of leaves). `index_ref` receives index -> object and
    resolves references to objects built by earlier calls; objects with an
    outer index found in `outer_index_outer_ref` are updated in place.
    With `copy=False`, Variables given in the state become the new graph's
    Variables (a view sharing them)."""
    if isinstance(graphdef, _treegraph.TreeGraphDef):
        if type(state) is list:
            return _treegraph.unflatten_tree_mode(graphdef, state, copy=copy_variables)
        flat = dict(state if isinstance(state, FlatState) else ensure_state(state).flat_state())
        return _treegraph.unflatten_tree_mode(
            graphdef, _treegraph.leaves_by_path(graphdef, flat), copy=copy_variables
        )
    leaves = _leaves_by_path(graphdef, state)
    objects = index_ref if index_ref is not None else {}
    reuse = {}
    if outer_index_outer_ref is not None:
        for index, outer in getattr(graphdef, "outer_index", ()):
            if outer in outer_index_outer_ref:
                reuse[index] = outer_index_outer_ref[outer]
    if refoutputs.needs_inputs(leaves):
        leaves = refoutputs.from_outputs(graphdef, leaves, reuse)
    return unflatten_graph(graphdef, leaves, copy=copy, reuse=reuse, objects=objects)


def _leaves_by_path(graphdef: GraphDef, state: object) -> dict[Path, tp.Any]:
    if type(state) is list:
        paths = leaf_paths(graphdef)
        leaves = dict(zip(paths, state))
        count = len(state)
    elif isinstance(state, FlatState):
        leaves = dict(state)
        count = len(state)
    elif isinstance(state, tp.Mapping) and all(type(k) is tuple for k in state):
        leaves = dict(state)  # already {path: leaf}
        count = len(leaves)
    elif isinstance(state, tp.Mapping):
        leaves = ensure_state(state).flat_dict()
        count = len(leaves)
    else:
        leaves, count = {(): state}, 1
    if count != graphdef.num_leaves:
        raise ValueError(
            f"unflatten: Incorrect number of leaves, the GraphDef expects "
            f"{graphdef.num_leaves} and the state holds {count}."
        )
    return leaves


# -- update / split / merge contexts -----------------------------------------------------
@dataclasses.dataclass(eq=False)
class UpdateContext:
    """The references shared by the splits and merges of one `update_context`."""

    tag: tp.Hashable
    outer_ref_outer_index: RefMap | None = None
    outer_index_inner_ref: IndexMap | None = None
    outer_index_outer_ref: IndexMap | None = None
    inner_ref_outer_index: RefMap | None = None

    def __hash__(self) -> int:
        return 0

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UpdateContext)

    def flatten_end(self, ref_index: RefMap) -> None:
        if self.outer_ref_outer_index is None:  # the outer split
            self.outer_ref_outer_index = ref_index
            self.outer_index_outer_ref = IndexMap.from_refmap(ref_index)
        else:  # an inner split: the inner objects are done
            self.outer_index_inner_ref = None
            self.inner_ref_outer_index = None

    def unflatten_end(self, index_ref: IndexMap, inner_merge: bool) -> None:
        if inner_merge:
            self.outer_index_inner_ref = index_ref
            self.inner_ref_outer_index = RefMap.from_indexmap(index_ref)


jax.tree_util.register_static(UpdateContext)


class _Stacks(threading.local):
    def __init__(self) -> None:
        self.update: dict[tp.Hashable, list[UpdateContext]] = {}


_STACKS = _Stacks()


class UpdateContextManager:
    """`with nnx.update_context(tag):` (or `@nnx.update_context(tag)`)."""

    def __init__(self, tag: tp.Hashable):
        self.tag = tag

    def __enter__(self) -> UpdateContext:
        ctx = UpdateContext(self.tag)
        _STACKS.update.setdefault(self.tag, []).append(ctx)
        return ctx

    def __exit__(self, *exc: object) -> None:
        stack = _STACKS.update[self.tag]
        stack.pop()
        if not stack:
            del _STACKS.update[self.tag]

    def __call__(self, f: tp.Callable) -> tp.Callable:
        import functools

        @functools.wraps(f)
        def wrapper(*args: object, **kwargs: tp.Any) -> tp.Any:
            with UpdateContextManager(self.tag):
                return f(*args, **kwargs)

        return wrapper


def update_context(tag: tp.Hashable) -> UpdateContextManager:
    """Share object identity between the split/merge contexts tagged `tag`."""
    return UpdateContextManager(tag)


def current_update_context(tag: tp.Hashable) -> UpdateContext:
    """The innermost active `update_context(tag)`."""
    stack = _STACKS.update.get(tag)
    if not stack:
        raise ValueError(f"No update context found for tag {tag!r}; use `nnx.update_context({tag!r})`.")
    return stack[-1]


class SplitContext:
    """Splits inside one `split_context` share a RefMap: an object split twice
    is a reference the second time."""

    def __init__(self, ctxtag: tp.Hashable | None, ref_index: RefMap, is_inner: bool | None):
        self.ctxtag = ctxtag
        self.ref_index = ref_index
        self.is_inner = is_inner

    def _outer(self) -> RefMap | None:
        if self.ctxtag is None:
            return None
        return current_update_context(self.ctxtag).inner_ref_outer_index or None

    def _known_refs(self) -> set[int] | None:
        """In an inner split: the ids of the Refs held by the outer Variables."""
        if self.ctxtag is None or not self.is_inner:
            return None
        return refoutputs.outer_refs(current_update_context(self.ctxtag).outer_index_outer_ref)

    def flatten(self, node: object, *filters: filterlib.Filter, with_paths: bool = True) -> tuple:
        if filters and not with_paths:
            raise ValueError("Cannot use filters with with_paths=False")
        graphdef, pairs = _flatten_pairs(node, self.ref_index, self._outer(), True, self._known_refs())
        if not with_paths:
            return graphdef, [leaf for _, leaf in pairs]
        flat = FlatState(pairs, sort=True)
        if not filters:
            return graphdef, flat
        parts = flat.split(*filters)
        return (graphdef, *(parts if isinstance(parts, tuple) else (parts,)))

    def split(self, node: object, *filters: filterlib.Filter) -> tuple:
        graphdef, pairs = _flatten_pairs(node, self.ref_index, self._outer(), True, self._known_refs())
        flat = FlatState(pairs, sort=True)
        parts = flat.split(*filters) if filters else flat
        parts = parts if isinstance(parts, tuple) else (parts,)
        return (graphdef, *(_nested(p) for p in parts))


def _nested(flat: FlatState) -> tp.Any:
    if len(flat) == 1 and flat.paths[0] == ():
        return flat.leaves[0]
    return flat.to_nested_state()


@contextlib.contextmanager
def split_context(ctxtag: tp.Hashable | None = None) -> tp.Iterator[SplitContext]:
    """A context whose `ctx.split(...)` calls share object identity."""
    is_inner = None
    if ctxtag is not None:
        is_inner = current_update_context(ctxtag).outer_ref_outer_index is not None
    ctx = SplitContext(ctxtag, RefMap(), is_inner)
    try:
        yield ctx
    finally:
        if ctxtag is not None:
            current_update_context(ctxtag).flatten_end(ctx.ref_index)
        del ctx.ref_index
        del ctx.ctxtag


class MergeContext:
    """Merges inside one `merge_context` share an IndexMap, so references made
    by a `split_context` resolve to the same new object."""

    def __init__(self, ctxtag: tp.Hashable | None, index_ref: IndexMap, is_inner: bool | None):
        self.ctxtag = ctxtag
        self.index_ref = index_ref
        self.is_inner = is_inner

    def _outer(self) -> IndexMap | None:
        if self.ctxtag is None:
            return None
        return current_update_context(self.ctxtag).outer_index_outer_ref or None

    def merge(self, graphdef: GraphDef, state: object, /, *states: object) -> tp.Any:
        merged = _merge_states((state, *states))
        return unflatten(graphdef, merged, index_ref=self.index_ref, outer_index_outer_ref=self._outer())

    def unflatten(self, graphdef: GraphDef, flat_state: tp.Any, /, *flat_states: tp.Any) -> tp.Any:
        state = flat_state if type(flat_state) is list else FlatState.merge(flat_state, *flat_states)
        return unflatten(graphdef, state, index_ref=self.index_ref, outer_index_outer_ref=self._outer())


def _merge_states(states: tuple) -> tp.Any:
    mappings = [s for s in states if isinstance(s, (tp.Mapping, FlatState))]
    if len(mappings) < len(states):  # a leaf root: its leaf is the state
        return [s for s in states if not isinstance(s, (tp.Mapping, FlatState))][0]
    flat: dict = {}
    for s in mappings:
        flat.update(s if isinstance(s, FlatState) else ensure_state(s).flat_state())
    return FlatState(flat.items())


@contextlib.contextmanager
def merge_context(ctxtag: tp.Hashable | None = None, inner: bool | None = None) -> tp.Iterator[MergeContext]:
    """A context whose `ctx.merge(...)` calls share object identity."""
    ctx = MergeContext(ctxtag, IndexMap(), inner)
    try:
        yield ctx
    finally:
        if ctxtag is not None:
            if inner is None:
                raise ValueError("merge_context: pass inner=True/False together with a ctxtag")
            current_update_context(ctxtag).unflatten_end(ctx.index_ref, inner)
        del ctx.index_ref
        del ctx.ctxtag
