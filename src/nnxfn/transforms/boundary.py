"""The one boundary mechanism every lifted transform uses.

1. `enter` (outside): flatten the arguments; all graph objects anywhere in
   args/kwargs are flattened *together*, so sharing across arguments is
   deduplicated. The result is hashable static data (`Entry.static`) plus
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

import jax

from nnxfn import core
from nnxfn.core.graph import is_array
from nnxfn.core.graphdef import GraphDef
from nnxfn.core.registry import lookup
from nnxfn.core.variable_like import VariableLike
from nnxfn.facade import context
from nnxfn.facade.variables import Variable

Path = tuple[tp.Any, ...]


_RAW = operator.attrgetter("raw_value")
_SET_RAW = Variable.raw_value.__set__  # the slot itself: no write checks (outside frames)


def is_node(x: tp.Any) -> bool:
    """Graph objects and Variables: what the boundary flattens itself."""
    return isinstance(x, VariableLike) or lookup(type(x)) is not None


def raw(leaf: tp.Any) -> tp.Any:
    return leaf.raw_value if isinstance(leaf, VariableLike) else leaf


@dataclasses.dataclass(frozen=True, eq=False)
class EntryStatic:
    """Hashable description of the inputs: what a compiled function is keyed on."""

    graphdef: GraphDef  # of the list of graph objects found in args
    paths: tuple[Path, ...]  # one per state leaf, relative to that list
    treedef: tp.Any  # of (args, kwargs) with graph objects as leaves
    node_positions: tuple[int, ...]  # where the graph objects sit in the leaves
    static_leaves: tuple[tuple[int, tp.Any], ...]  # non-array leaves kept static

    def _key(self) -> tuple:
        return (self.graphdef, self.paths, self.treedef, self.node_positions, self.static_leaves)

    def __hash__(self) -> int:  # cached: jit hashes this on every call
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash(self._key())
            object.__setattr__(self, "_hash", h)
        return h

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        return isinstance(other, EntryStatic) and hash(self) == hash(other) and self._key() == other._key()


@dataclasses.dataclass
class Entry:
    static: EntryStatic
    values: list  # raw values of the graph objects' state leaves
    others: list  # the remaining (array) leaves of args/kwargs
    live: list  # the caller's Variables / raw arrays, one per state leaf
    objects: list  # the caller's graph objects and Variables, by GraphDef index
    nodes: list  # the graph objects found in args, in order
    # Cached entries only: every state leaf is a live Variable we may write
    # directly, and commit plans (targets per ExitStatic) shared across calls.
    fast: bool = False
    plans: dict | None = None

    def boxed(self) -> frozenset:
        """Paths of leaves boxed only in the State (arrays of foreign pytrees)."""
        found = self.static.__dict__.get("_boxed")
        if found is None:
            found = core.graph.boxed_paths(self.static.graphdef)
            object.__setattr__(self.static, "_boxed", found)
        return found


def enter(args: tuple, kwargs: dict) -> Entry:
    leaves, treedef = jax.tree_util.tree_flatten((args, kwargs), is_leaf=is_node)
    return _enter(leaves, treedef)


def _enter(leaves: list, treedef: tp.Any, containers: list | None = None) -> Entry:
    node_positions, nodes, others, static_leaves = [], [], [], []
    for i, leaf in enumerate(leaves):
        if is_node(leaf):
            node_positions.append(i)
            nodes.append(leaf)
        elif leaf is None or is_array(leaf) or isinstance(leaf, (int, float, complex, bool)):
            others.append(leaf)
        else:
            static_leaves.append((i, leaf))
    objects: list = []
    graphdef, pairs = core.flatten(nodes, copy=False, objects=objects, containers=containers)
    static = EntryStatic(
        graphdef,
        tuple(p for p, _ in pairs),
        treedef,
        tuple(node_positions),
        tuple(static_leaves),
    )
    live = [leaf for _, leaf in pairs]
    return Entry(static, [raw(x) for x in live], others, live, objects, nodes)


class EntryCache:
    """Reuses `enter` results across calls (the fast path of `nnx.jit`).

    A cached Entry is valid while the same graph objects sit at the same
    argument positions, the structure epoch (bumped by every attribute
    assignment and metadata change) is unchanged, and no list/dict on the
    way was edited in place. Then a call only reads the current raw value of
    each Variable: no graph walk, no per-leaf objects.
    """

    def __init__(self, size: int = 8):
        self.size = size
        self._entries: dict[tp.Any, tuple] = {}

    def enter(self, args: tuple, kwargs: dict) -> Entry:
        leaves, treedef = jax.tree_util.tree_flatten((args, kwargs), is_leaf=is_node)
        nodes = [is_node(x) for x in leaves]
        ids = tuple(id(x) if n else _plain(x) for x, n in zip(leaves, nodes))
        if False in ids:  # a static (non-array) leaf: its value is part of the key
            return _enter(leaves, treedef)
        key = (treedef, ids)
        hit = self._entries.get(key)
        epoch = context.structure_epoch()
        if hit is not None:
            cached, cached_epoch, containers = hit
            if cached_epoch == epoch and all(_snapshot(c) == snap for c, snap in containers):
                live = cached.live
                others = [x for x, n in zip(leaves, nodes) if not n]
                values = list(map(_RAW, live)) if cached.fast else [raw(x) for x in live]
                return Entry(cached.static, values, others, live, cached.objects,
                             cached.nodes, cached.fast, cached.plans)
        found: list = []
        entry = _enter(leaves, treedef, found)
        if not entry.static.static_leaves:
            boxed = entry.boxed()
            entry.fast = all(
                isinstance(x, Variable) and x._frame is not context.FOREIGN and p not in boxed
                for x, p in zip(entry.live, entry.static.paths)
            )
            entry.plans = {}
            if len(self._entries) >= self.size:
                self._entries.pop(next(iter(self._entries)))
            self._entries[key] = (entry, epoch, [(c, _snapshot(c)) for c in found])
        return entry


def _plain(x: tp.Any) -> bool | None:
    """None for leaves passed to JAX as arrays, False for static leaves."""
    if x is None or is_array(x) or isinstance(x, (int, float, complex, bool)):
        return None
    return False


def _snapshot(container: tp.Any) -> tuple:
    if type(container) is dict:
        return tuple((k, id(v)) for k, v in container.items())
    return tuple(map(id, container))


@dataclasses.dataclass
class Inside:
    """What `rebuild` made: the fresh objects and the frame they live in."""

    static: EntryStatic
    values: list
    nodes: list
    objects: dict[int, tp.Any]
    frame: context.Frame


def rebuild(static: EntryStatic, values: tp.Sequence, others: tp.Sequence,
            frame: context.Frame) -> tuple[tuple, dict, Inside]:
    """Fresh args/kwargs from traced values; call inside `frame`."""
    objects: dict[int, tp.Any] = {}
    nodes = core.unflatten(static.graphdef, dict(zip(static.paths, values)), objects=objects)
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
    out_treedef: tp.Any
    out_positions: tuple[int, ...]


def leave(inside: Inside, out: tp.Any, *, emit_all: tp.Container[int] = ()) -> tuple[ExitStatic, list, list]:
    """(exit static, output array leaves, emitted state values).

    `emit_all` lists input leaf indices that must be emitted even if
    unchanged (e.g. donated buffers).
    """
    out_leaves, out_treedef = jax.tree_util.tree_flatten(out, is_leaf=is_node)
    out_positions = tuple(i for i, x in enumerate(out_leaves) if is_node(x))
    out_nodes = [out_leaves[i] for i in out_positions]
    out_arrays = [x for i, x in enumerate(out_leaves) if i not in out_positions]

    new_objects: list = []
    graphdef, pairs = core.flatten((inside.nodes, out_nodes), copy=False, objects=new_objects)
    entry_index = {id(obj): i for i, obj in inside.objects.items()}
    origins = tuple(
        (new_i, entry_index[id(obj)])
        for new_i, obj in enumerate(new_objects)
        if id(obj) in entry_index
    )
    n_in = len(inside.static.paths)
    in_part = graphdef.root.children[0][1]
    # Same structure, and every object still where it was (a swap of two equal-looking
    # sub-objects changes which object sits where: a structural change).
    same = (in_part == inside.static.graphdef.root and len(origins) == len(inside.objects)
            and all(n == o for n, o in origins))
    if same and not out_nodes:
        changed = tuple(
            i for i, (_, leaf) in enumerate(pairs[:n_in])
            if i in emit_all or raw(leaf) is not inside.values[i]
        )
        values = [raw(pairs[i][1]) for i in changed]
        return ExitStatic(changed, None, (), origins, out_treedef, out_positions), out_arrays, values
    if same:
        changed = tuple(
            i for i, (_, leaf) in enumerate(pairs[:n_in])
            if i in emit_all or raw(leaf) is not inside.values[i]
        )
        emitted = [pairs[i] for i in changed] + list(pairs[n_in:])
    else:
        changed, emitted = None, list(pairs)
    return (
        ExitStatic(changed, graphdef, tuple(p for p, _ in emitted), origins, out_treedef, out_positions),
        out_arrays,
        [raw(leaf) for _, leaf in emitted],
    )


def commit(entry: Entry, exit: ExitStatic, out_arrays: tp.Sequence, values: tp.Sequence) -> tp.Any:
    """Write the emitted values onto the caller's objects; return the output."""
    if exit.graphdef is None:
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
        _, out_nodes = core.unflatten(exit.graphdef, leaves, reuse=reuse)
    return assemble(exit.out_treedef, exit.out_positions, out_nodes, out_arrays)


def assemble(treedef: tp.Any, positions: tp.Sequence[int], nodes: tp.Sequence, others: tp.Sequence) -> tp.Any:
    """Put graph objects and other leaves back into one pytree."""
    at = dict(zip(positions, nodes))
    it = iter(others)
    return jax.tree_util.tree_unflatten(
        treedef, [at[i] if i in at else next(it) for i in range(treedef.num_leaves)]
    )


def commit_all(entry: Entry, values: tp.Sequence) -> None:
    """Write one new value per state leaf of `entry` onto the caller's objects."""
    _commit_leaves(entry, range(len(values)), values)


def _commit_leaves(entry: Entry, changed: tp.Sequence[int], values: tp.Sequence) -> None:
    if entry.fast and context.current_frame() is None:
        # Hot path: one C-level loop of slot writes, targets planned once per exit.
        plan = entry.plans.get(id(changed))
        if plan is None or plan[0] is not changed:
            plan = entry.plans[id(changed)] = (changed, [entry.live[i] for i in changed])
        collections.deque(map(_SET_RAW, plan[1], values), maxlen=0)
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
