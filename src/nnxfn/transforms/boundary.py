"""The one boundary mechanism every lifted transform uses.

1. `enter` (outside): flatten the arguments; all graph objects anywhere in
   args/kwargs are flattened *together*, so sharing across arguments is
   deduplicated. The result is hashable static data (`EntryRecord.static`) plus
   flat lists of raw values.
2. `rebuild` (inside the JAX transform): merge fresh objects from the traced
   values, inside a transform `Frame` (writes to captured objects raise).
3. `leave` (inside): flatten the fresh inputs again together with any graph
   objects in the output; emit only the input leaves that changed (or all of
   them if the structure changed) plus the output objects' leaves.
4. `commit` (outside): write those values onto the caller's objects; output
   objects that are inputs come back as the caller's own objects.

If the function raises, nothing is committed: the caller's objects were never
touched (the function only ever saw fresh copies).
"""

from __future__ import annotations

import collections
import dataclasses
import operator
import typing as tp
import weakref

import jax
from jax.tree_util import PyTreeDef

from nnxfn import core
from nnxfn.core import caches
from nnxfn.core.graph import is_array
from nnxfn.core.graphdef import (
    ArrayDef,
    BoxedDef,
    GraphDef,
    NodeDef,
    PytreeDef,
    VariableDef,
    same_value,
)
from nnxfn.core.registry import lookup
from nnxfn.core.splitcache import same_snapshot, snapshot
from nnxfn.core.variable_like import VariableLike
from nnxfn.facade import context
from nnxfn.facade.variables import Variable

Path = tuple[tp.Any, ...]
#: A value at a leaf crossing the boundary: an array or tracer, a Python scalar, a
#: `ShapeDtypeStruct`, a `jax.Ref`, or None. The boundary moves leaves and never looks
#: into them, so it types them as `object`.
Leaf: tp.TypeAlias = object


_RAW = operator.attrgetter("raw_value")
_CACHING = caches.SWITCH  # `EntryCache` is a memo kept on objects: it obeys the switch
# the slot itself: no write checks (outside frames)
_SET_RAW = Variable.__dict__["raw_value"].__set__


def is_graph_object(x: object) -> bool:
    """Graph objects (registered node types) and Variables: what the boundary flattens itself."""
    return isinstance(x, VariableLike) or lookup(type(x)) is not None


def raw(leaf: object) -> Leaf:
    """A Variable's raw value; any other leaf itself."""
    return leaf.raw_value if isinstance(leaf, VariableLike) else leaf


@dataclasses.dataclass(frozen=True, eq=False)
class EntryStatic:
    """Hashable description of the inputs: what a compiled function is keyed on."""

    graphdef: GraphDef  # of the list of graph objects found in args
    paths: tuple[Path, ...]  # one per state leaf, relative to that list
    treedef: PyTreeDef  # of (args, kwargs) with graph objects as leaves
    node_positions: tuple[int, ...]  # where the graph objects sit in the leaves
    static_leaves: tuple[tuple[int, tp.Hashable], ...]  # non-array leaves kept static

    def __hash__(self) -> int:  # cached: jit hashes this on every call
        h: int | None = self.__dict__.get("_hash")
        if h is None:
            h = hash((self.graphdef, self.paths, self.treedef, self.node_positions, self.static_leaves))
            object.__setattr__(self, "_hash", h)
        return h

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        return (
            isinstance(other, EntryStatic)
            and hash(self) == hash(other)
            and self.graphdef == other.graphdef
            and self.paths == other.paths
            and self.treedef == other.treedef
            and self.node_positions == other.node_positions
            and self.static_leaves == other.static_leaves
        )


class EntryRecord:
    """The flattened arguments of one call.

    static: what the compiled function is keyed on; values: raw values of the
    graph objects' state leaves; others: the remaining (array) leaves of
    args/kwargs; live: the caller's Variables / raw arrays, one per state
    leaf; objects: the caller's graph objects and Variables, by GraphDef
    index; nodes: the graph objects found in args, in order. Entries from
    `EntryCache` also carry the cached view they came from (`view`), whose
    commit plans are shared across calls, and the re-read values of its
    pure attributes (`groups`).
    """

    __slots__ = ("static", "values", "others", "live", "_objects", "nodes", "view", "groups")

    def __init__(
        self,
        static: EntryStatic,
        values: list,
        others: list,
        live: list,
        objects: list | None,
        nodes: list,
        view: CachedView | None = None,
        groups: list | None = None,
    ):
        self.static = static
        self.values = values
        self.others = others
        self.live = live
        self._objects = objects
        self.nodes = nodes
        self.view = view
        self.groups = groups

    @property
    def objects(self) -> list:
        if self._objects is None:  # a cached view holds them weakly
            assert self.view is not None  # entries without a view keep their objects
            self._objects = [r() for r in self.view.object_refs]
        return self._objects

    @property
    def fast(self) -> bool:
        return self.view is not None

    def boxed(self) -> frozenset:
        """Paths of leaves boxed only in the State (arrays of foreign pytrees)."""
        found = self.static.__dict__.get("_boxed")
        if found is None:
            found = core.graph.boxed_paths(self.static.graphdef)
            object.__setattr__(self.static, "_boxed", found)
        return found


def enter(args: tuple, kwargs: dict) -> EntryRecord:
    leaves, treedef = jax.tree_util.tree_flatten((args, kwargs), is_leaf=is_graph_object)
    return _enter(leaves, treedef)


def _enter(leaves: list[object], treedef: PyTreeDef, containers: list | None = None) -> EntryRecord:
    node_positions, nodes, others, static_leaves = [], [], [], []
    for i, leaf in enumerate(leaves):
        if is_graph_object(leaf):
            node_positions.append(i)
            nodes.append(leaf)
        elif leaf is None or is_array(leaf) or isinstance(leaf, (int, float, complex, bool)):
            others.append(leaf)
        else:
            static_leaves.append((i, leaf))
    objects: list = []
    graphdef, pairs = core.flatten_graph(nodes, copy=False, objects=objects, containers=containers)
    static = EntryStatic(
        graphdef=graphdef,
        paths=tuple(p for p, _ in pairs),
        treedef=treedef,
        node_positions=tuple(node_positions),
        static_leaves=tuple(static_leaves),
    )
    live = [leaf for _, leaf in pairs]
    return EntryRecord(static, [raw(x) for x in live], others, live, objects, nodes)


_META = operator.attrgetter("_metadata")


@dataclasses.dataclass(slots=True, eq=False)
class Group:
    """A pure value attribute (a raw array, or a foreign pytree such as an
    Equinox module holding no Variable or graph object) of a graph node.
    Its leaves are re-read on every call, so in-place edits are seen and a
    commit that rebuilds it with the same tree structure changes nothing."""

    node: weakref.ref  # the graph node holding it
    key: str  # its attribute name
    start: int  # index of its first state leaf
    treedef: PyTreeDef  # JAX treedef of the value
    arrays: tuple[int, ...]  # positions of the state leaves among its JAX leaves
    statics: tuple[tuple[int, object], ...]  # its other JAX leaves (static in the GraphDef)


@dataclasses.dataclass(slots=True, eq=False)
class CachedView:
    """A cached `enter` result, valid while the objects it walked keep their
    structure. Holds the argument graphs weakly (a dropped model is freed)."""

    static: EntryStatic
    variables: list  # live Variables at every state leaf outside the groups
    groups: tuple[Group, ...]
    arg_refs: list  # weakrefs to the argument objects; their callbacks drop the view
    object_refs: list  # weakrefs to the graph objects and Variables, by GraphDef index
    node_refs: list  # weakrefs to the graph nodes walked
    versions: tuple  # their structure versions when walked
    metadata: list  # the Variables' metadata tuples (compared by identity)
    containers: list  # (list/dict/foreign pytree, its items when walked)
    epoch: int
    hard: int
    plans: dict  # id(changed) -> CommitPlan


@dataclasses.dataclass(slots=True, eq=False)
class CommitPlan:
    """Where the emitted values of one exit go, computed once per exit."""

    changed: tuple[int, ...]
    targets: list  # Variables written directly
    picks: list | None  # positions of their values among the emitted ones (None: all)
    groups: list  # (group index, [(position among emitted, position among its JAX leaves)])


class EntryCache:
    """Reuses `enter` results across calls (the fast path of `nnx.jit`).

    A cached view is valid while the same graph objects sit at the same
    argument positions, none of the objects it walked changed structure
    (checked only when the process-wide epoch moved, by comparing their own
    versions), and no list/dict/foreign pytree holding graph objects was
    edited in place. Then a call reads the current raw value of each
    Variable and re-reads each pure attribute: no graph walk. With caching
    off (`NNXFN_CACHE=0`, see `nnxfn.core.caches`) every call walks the
    arguments.
    """

    def __init__(self, size: int = 8):
        self.size = size
        self._entries: dict[tp.Hashable, CachedView] = {}
        self.lookups_missed = 0

    def enter(self, args: tuple, kwargs: dict) -> EntryRecord:
        leaves, treedef = jax.tree_util.tree_flatten((args, kwargs), is_leaf=is_graph_object)
        if not _CACHING.on:  # NNXFN_CACHE=0: walk the arguments on every call
            return _enter(leaves, treedef)
        nodes = [is_graph_object(x) for x in leaves]
        ids = tuple(id(x) if n else _plain(x) for x, n in zip(leaves, nodes))
        if False in ids:  # a static (non-array) leaf: its value is part of the key
            return _enter(leaves, treedef)
        key = (treedef, ids)
        view = self._entries.get(key)
        if view is not None:
            entry = _use(view, leaves, nodes)
            if entry is not None:
                return entry
            self._entries.pop(key, None)
        self.lookups_missed += 1
        epoch, hard = context.structure_epoch(), context.hard_epoch()
        found: list = []
        entry = _enter(leaves, treedef, found)
        view = self._view(entry, found, key, epoch, hard)
        if view is not None:
            while len(self._entries) >= self.size:
                try:
                    del self._entries[next(iter(self._entries))]
                except (StopIteration, KeyError, RuntimeError):  # another thread got there
                    break
            self._entries[key] = view
            entry.view = view
            entry.groups = _read_groups(view)
        return entry

    def _view(
        self, entry: EntryRecord, found: list, key: tp.Hashable, epoch: int, hard: int
    ) -> CachedView | None:
        static = entry.static
        if static.static_leaves:
            return None
        groups = _find_groups(entry, static)
        if groups is None:
            return None
        inside = {i for g in groups for i in range(g.start, g.start + len(g.arrays))}
        variables = [x for i, x in enumerate(entry.live) if i not in inside]
        if not all(
            type(x) is not None and isinstance(x, Variable) and x._frame is not context.FOREIGN
            for x in variables
        ):
            return None
        entries = self._entries

        def drop(_: object) -> None:
            entries.pop(key, None)

        try:
            arg_refs = [weakref.ref(x, drop) for x in entry.nodes]
            object_refs = [weakref.ref(x) for x in entry.objects]
        except TypeError:  # an object that cannot be weakly referenced
            return None
        node_refs = [r for r, x in zip(object_refs, entry.objects) if not isinstance(x, VariableLike)]
        versions = tuple(context.version_of(x) for x in entry.objects if not isinstance(x, VariableLike))
        return CachedView(
            static=static,
            variables=variables,
            groups=tuple(groups),
            arg_refs=arg_refs,
            object_refs=object_refs,
            node_refs=node_refs,
            versions=versions,
            metadata=list(map(_META, variables)),
            containers=[(c, snapshot(c)) for c in found if c is not entry.nodes],
            epoch=epoch,
            hard=hard,
            plans={},
        )


def _find_groups(entry: EntryRecord, static: EntryStatic) -> list[Group] | None:
    """The pure value attributes of the graph nodes, with their leaf ranges;
    None if JAX's view of one does not match the GraphDef's."""
    groups = []
    pos = 0
    stack: list[tuple[tp.Any, NodeDef | None, tp.Hashable]] = [(static.graphdef.root, None, None)]
    while stack:
        d, parent, key = stack.pop()
        if isinstance(d, (VariableDef, BoxedDef, ArrayDef)) and parent is None:
            pos += 1
            continue
        pure = parent is not None and (
            isinstance(d, ArrayDef) or (isinstance(d, PytreeDef) and core.graph._pure(d))
        )
        if pure:
            assert parent is not None  # a pure attribute has a parent node
            count = _count_leaves(d)
            node = entry.objects[parent.index]
            value = node.__dict__.get(key, _MISSING) if isinstance(key, str) else _MISSING
            if value is _MISSING or not isinstance(key, str):
                return None
            flat, treedef = jax.tree_util.tree_flatten(value)
            arrays = tuple(i for i, x in enumerate(flat) if is_array(x))
            if len(arrays) != count or any(
                flat[i] is not raw(entry.live[pos + j]) for j, i in enumerate(arrays)
            ):
                return None
            statics = tuple((i, x) for i, x in enumerate(flat) if not is_array(x))
            group = Group(
                node=weakref.ref(node), key=key, start=pos, treedef=treedef, arrays=arrays, statics=statics
            )
            groups.append(group)
            pos += count
            continue
        if isinstance(d, VariableDef) or isinstance(d, (BoxedDef, ArrayDef)):
            pos += 1
            continue
        children = getattr(d, "children", ())
        owner = d if isinstance(d, NodeDef) else None
        stack.extend((child, owner, k) for k, child in reversed(children))
    return groups


def _count_leaves(d: object) -> int:
    if isinstance(d, (VariableDef, BoxedDef, ArrayDef)):
        return 1
    return sum(_count_leaves(child) for _, child in getattr(d, "children", ()))


def _use(view: CachedView, leaves: list, nodes: list) -> EntryRecord | None:
    """An EntryRecord from `view` for the current arguments, or None if stale."""
    if view.epoch != context.structure_epoch() and not _revalidate(view):
        return None
    for c, snap in view.containers:
        if not same_snapshot(snapshot(c), snap):
            return None
    values = list(map(_RAW, view.variables))
    live = view.variables
    groups = None
    if view.groups:
        groups = _read_groups(view)
        if groups is None:
            return None
        live = list(live)
        for g, (_, flat) in zip(view.groups, groups):
            arrays = [flat[i] for i in g.arrays]
            values[g.start : g.start] = arrays
            live[g.start : g.start] = arrays
    others = [x for x, n in zip(leaves, nodes) if not n]
    arg_nodes = [x for x, n in zip(leaves, nodes) if n]
    return EntryRecord(view.static, values, others, live, None, arg_nodes, view, groups)


def _read_groups(view: CachedView) -> list | None:
    """(node, JAX leaves) of each pure attribute now; None if one changed structure."""
    out = []
    for g in view.groups:
        node = g.node()
        if node is None:
            return None
        value = node.__dict__.get(g.key, _MISSING)
        flat, treedef = jax.tree_util.tree_flatten(value)
        if treedef != g.treedef:
            return None
        for i, v in g.statics:
            if not same_value(flat[i], v):
                return None
        for i in g.arrays:
            if not is_array(flat[i]):
                return None
        out.append((node, flat))
    return out


def _revalidate(view: CachedView) -> bool:
    """The epoch moved: did any object of this view change structure?"""
    if view.hard != context.hard_epoch():
        return False
    epoch = context.structure_epoch()
    try:
        versions = tuple([context.version_of(r()) for r in view.node_refs])
    except AttributeError:  # one of them was freed
        return False
    if versions != view.versions:
        return False
    if not all(map(operator.is_, map(_META, view.variables), view.metadata)):
        return False
    view.epoch = epoch
    return True


_MISSING = object()


def _plain(x: object) -> bool | None:
    """None for leaves passed to JAX as arrays, False for static leaves."""
    if x is None or is_array(x) or isinstance(x, (int, float, complex, bool)):
        return None
    return False


@dataclasses.dataclass
class Inside:
    """What `rebuild` made: the fresh objects and the frame they live in."""

    static: EntryStatic
    values: list
    nodes: list
    objects: dict[int, tp.Any]
    frame: context.Frame


def rebuild(
    static: EntryStatic, values: tp.Sequence, others: tp.Sequence, frame: context.Frame
) -> tuple[tuple, dict, Inside]:
    """Fresh args/kwargs from traced values; call inside `frame`."""
    made: list = []
    try:  # by position: no paths, no recursion
        nodes = core.program.unflatten_leaves(static.graphdef, values, objects=made)
        objects: dict[int, tp.Any] = dict(enumerate(made))
    except core.program.LeafMismatch:
        objects = {}
        nodes = core.unflatten_graph(static.graphdef, dict(zip(static.paths, values)), objects=objects)
    positions = static.node_positions + tuple(p for p, _ in static.static_leaves)
    fixed = list(nodes) + [v for _, v in static.static_leaves]
    args, kwargs = assemble(static.treedef, positions, fixed, others)
    return args, kwargs, Inside(static, list(values), nodes, objects, frame)


@dataclasses.dataclass(frozen=True)
class ExitStatic:
    """Hashable description of what left the transform."""

    changed: tuple[int, ...] | None  # indices of changed input leaves; None: structure changed
    graphdef: GraphDef | None  # of (inputs, output objects), when needed for commit
    paths: tuple[Path, ...]  # paths (in `graphdef`) of the emitted leaves
    origins: tuple[tuple[int, int], ...]  # (index in graphdef, index in the entry)
    out_treedef: PyTreeDef
    out_positions: tuple[int, ...]


class Left(tp.NamedTuple):
    """What `leave` returns (and `commit` takes back, outside the transform)."""

    exit: ExitStatic  # hashable: travels as pytree aux data
    out_arrays: list  # the output's non-graph-object leaves
    emitted: list  # the state values that leave: changed inputs, then output objects'


def leave(inside: Inside, out: object, *, emit_all: tp.Container[int] = ()) -> Left:
    """The exit description, the output's array leaves and the emitted state values.

    `emit_all` lists input leaf indices that must be emitted even if
    unchanged (e.g. donated buffers).
    """
    out_leaves, out_treedef = jax.tree_util.tree_flatten(out, is_leaf=is_graph_object)
    out_positions = tuple(i for i, x in enumerate(out_leaves) if is_graph_object(x))
    out_nodes = [out_leaves[i] for i in out_positions]
    out_arrays = [x for i, x in enumerate(out_leaves) if i not in out_positions]

    new_objects: list = []
    graphdef, pairs = core.flatten_graph((inside.nodes, out_nodes), copy=False, objects=new_objects)
    entry_index = {id(obj): i for i, obj in inside.objects.items()}
    origins = tuple(
        (new_i, entry_index[id(obj)]) for new_i, obj in enumerate(new_objects) if id(obj) in entry_index
    )
    n_in = len(inside.static.paths)
    in_part = graphdef.root.children[0][1]
    # Same structure (flat compare: any depth), and every object still where it was
    # (a swap of two equal-looking sub-objects is a structural change).
    n_obj = len(inside.objects)  # the inputs' objects keep their indices (checked below)
    in_links = tuple(link for link in graphdef.links if link[0] < n_obj and link[2] < n_obj)
    same = (
        GraphDef(in_part, n_in, in_links) == inside.static.graphdef
        and len(origins) == len(inside.objects)
        and all(n == o for n, o in origins)
    )
    changed: tuple[int, ...] | None
    if same and not out_nodes:
        changed = tuple(
            i
            for i, (_, leaf) in enumerate(pairs[:n_in])
            if i in emit_all or raw(leaf) is not inside.values[i]
        )
        values = [raw(pairs[i][1]) for i in changed]
        exit = ExitStatic(
            changed=changed,
            graphdef=None,
            paths=(),
            origins=origins,
            out_treedef=out_treedef,
            out_positions=out_positions,
        )
        return Left(exit, out_arrays, values)
    if same:
        changed = tuple(
            i
            for i, (_, leaf) in enumerate(pairs[:n_in])
            if i in emit_all or raw(leaf) is not inside.values[i]
        )
        emitted = [pairs[i] for i in changed] + list(pairs[n_in:])
    else:
        changed, emitted = None, list(pairs)  # structure changed: every leaf is emitted
    exit = ExitStatic(
        changed=changed,
        graphdef=graphdef,
        paths=tuple(p for p, _ in emitted),
        origins=origins,
        out_treedef=out_treedef,
        out_positions=out_positions,
    )
    return Left(exit, out_arrays, [raw(leaf) for _, leaf in emitted])


def commit(entry: EntryRecord, exit: ExitStatic, out_arrays: tp.Sequence, values: tp.Sequence) -> tp.Any:
    """Write the emitted values onto the caller's objects; return the output."""
    if exit.graphdef is None:
        assert exit.changed is not None  # no GraphDef: the structure is unchanged
        _commit_leaves(entry, exit.changed, values)
        out_nodes: list = []
    else:
        leaves = dict(zip(exit.paths, values))
        if exit.changed is not None:  # structure unchanged: unchanged leaves are live
            emitted = set(exit.changed)
            for i, (path, leaf) in enumerate(zip(entry.static.paths, entry.live)):
                if i not in emitted:
                    leaves[(0,) + path] = raw(leaf)
        reuse = {new_i: entry.objects[old_i] for new_i, old_i in exit.origins}
        _, out_nodes = core.unflatten_graph(exit.graphdef, leaves, reuse=reuse)
        for obj in reuse.values():  # attributes may have been added: cached views re-walk
            if not isinstance(obj, VariableLike):
                context.bump_structure(obj)
    return assemble(exit.out_treedef, exit.out_positions, out_nodes, out_arrays)


def assemble(
    treedef: PyTreeDef, positions: tp.Sequence[int], nodes: tp.Sequence, others: tp.Sequence
) -> tp.Any:
    """Put graph objects and other leaves back into one pytree."""
    at = dict(zip(positions, nodes))
    it = iter(others)
    return jax.tree_util.tree_unflatten(
        treedef, [at[i] if i in at else next(it) for i in range(treedef.num_leaves)]
    )


def commit_all(entry: EntryRecord, values: tp.Sequence) -> None:
    """Write one new value per state leaf of `entry` onto the caller's objects."""
    _commit_leaves(entry, range(len(values)), values)


def _commit_leaves(entry: EntryRecord, changed: tp.Sequence[int], values: tp.Sequence) -> None:
    view = entry.view
    if view is not None and context.current_frame() is None:
        # Hot path: one C-level loop of slot writes, targets planned once per exit.
        plan = view.plans.get(id(changed))
        if plan is None or plan.changed is not changed:
            plan = _plan(view, entry, changed)
            if type(changed) is tuple:
                view.plans[id(changed)] = plan
        picked = values if plan.picks is None else [values[j] for j in plan.picks]
        collections.deque(map(_SET_RAW, plan.targets, picked), maxlen=0)
        if plan.groups:
            _rebuild_groups(view, entry, plan, values)
        return
    loose = {}
    boxed = entry.boxed()
    for i, value in zip(changed, values):
        target = entry.live[i]
        if isinstance(target, VariableLike) and entry.static.paths[i] not in boxed:
            target.set_raw(value)
        else:
            loose[entry.static.paths[i]] = value
    by_node: dict[int, dict] = {}  # raw arrays held directly by their parents
    for path, value in loose.items():
        by_node.setdefault(path[0], {})[path[1:]] = value
    for k, flat in by_node.items():  # one update per argument: foreign pytrees rebuilt once
        core.update(entry.nodes[k], core.State.from_flat_path(flat))


def _rebuild_groups(
    view: CachedView, entry: EntryRecord, plan: CommitPlan, values: tp.Sequence[Leaf]
) -> None:
    """Write the emitted values into the pure attributes: rebuilt, same structure."""
    assert entry.groups is not None  # an entry of a view with groups has read them
    for gi, items in plan.groups:
        group = view.groups[gi]
        node, flat = entry.groups[gi]
        flat = list(flat)
        for j, p in items:
            flat[p] = values[j]
        node.__dict__[group.key] = group.treedef.unflatten(flat)


def _plan(view: CachedView, entry: EntryRecord, changed: tp.Sequence[int]) -> CommitPlan:
    owner = {}
    for gi, g in enumerate(view.groups):
        for j, p in enumerate(g.arrays):
            owner[g.start + j] = (gi, p)
    targets: list[VariableLike] = []
    picks: list[int] = []
    by_group: dict[int, list[tuple[int, int]]] = {}
    for j, i in enumerate(changed):
        found = owner.get(i)
        if found is None:
            targets.append(entry.live[i])
            picks.append(j)
        else:
            by_group.setdefault(found[0], []).append((j, found[1]))
    all_vars = len(picks) == len(changed)
    return CommitPlan(
        changed=changed if type(changed) is tuple else tuple(changed),
        targets=targets,
        picks=None if all_vars else picks,
        groups=list(by_group.items()),
    )
