"""Iterations over an object graph, with Flax's signatures: `iter_graph`,
`find_duplicates`, `recursive_map`.

`graph=`/`graph_updates=` are accepted; `graph=False` (or
`set_graph_mode(False)`) raises what Flax's tree mode rejects (`treemode.py`).
"""

from __future__ import annotations

import typing as tp

from nnxfn.core import filters as filterlib, treemode
from nnxfn.core.graph import merge_graph, split_graph
from nnxfn.core.kinds import CONTAINERS, children_of, container_children
from nnxfn.core.registry import lookup
from nnxfn.core.variable_like import DataLeaf, VariableLike
from nnxfn.core.writes import target_at

Path = tuple[tp.Hashable, ...]


def iter_graph(
    node: object, /, *, graph: bool | None = None, graph_updates: bool | None = None
) -> tp.Iterator[tuple[Path, tp.Any]]:
    """Yield (path, value) for every node and leaf, children before parents.

    Each shared object is visited once. The children of a node are listed
    before they are visited, so setting attributes of the node a loop just
    received (as in model surgery) is safe.
    """
    treemode.check_node(node, "iter_graph", graph)
    return _iter_graph(node)


def _iter_graph(node: object) -> tp.Iterator[tuple[Path, object]]:
    seen: set[int] = set()

    def visit(x: object, path: Path) -> tp.Iterator[tuple[Path, object]]:
        if type(x) is DataLeaf:
            x = x.value
        if isinstance(x, VariableLike) or lookup(type(x)) is not None:
            if id(x) in seen:
                return
            seen.add(id(x))
        for k, child in children_of(x):
            yield from visit(child, path + (k,))
        yield path, x

    yield from visit(node, ())


def find_duplicates(
    node: object,
    /,
    *,
    only: filterlib.Filter = ...,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> list[list[Path]]:
    """Groups of paths reaching the same graph node or Variable; with `only`,
    the later paths of a group are kept only if the object matches it there."""
    groups = _duplicates(node)
    if only is Ellipsis:
        return groups
    pred = filterlib.to_predicate(only)
    out = []
    for paths in groups:
        obj = target_at(node, paths[0])
        kept = [paths[0]] + [p for p in paths[1:] if pred(p, obj)]
        if len(kept) > 1:
            out.append(kept)
    return out


def _duplicates(node: object) -> list[list[Path]]:
    found: dict[int, list[Path]] = {}

    def visit(x: object, path: Path) -> None:
        if isinstance(x, VariableLike) or lookup(type(x)) is not None:
            paths = found.setdefault(id(x), [])
            paths.append(path)
            if len(paths) > 1:
                return
        for k, child in children_of(x):
            visit(child, path + (k,))

    visit(node, ())
    return [paths for paths in found.values() if len(paths) > 1]


def recursive_map(
    f: tp.Callable[[Path, tp.Any], tp.Any],
    node: object,
    /,
    *,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> tp.Any:
    """A copy of `node` where every value is replaced by `f(path, value)`,
    children before parents (the parent receives its mapped children).
    The original graph is not modified; sharing is preserved."""
    treemode.check_node(node, "recursive_map", graph)
    node = merge_graph(*split_graph(node), copy=True)
    done: dict[int, object] = {}

    def visit(x: tp.Any, path: Path) -> tp.Any:
        identity = isinstance(x, VariableLike) or lookup(type(x)) is not None
        if identity and id(x) in done:
            return done[id(x)]
        impl = lookup(type(x))
        if impl is not None:
            done[id(x)] = x  # cycles see the node itself
            for k, child in list(impl.children(x)):
                new = visit(child, path + (k,))
                if new is not child:
                    impl.set_child(x, k, new)
        elif type(x) in CONTAINERS and not isinstance(x, VariableLike):
            items = [(k, visit(c, path + (k,))) for k, c in container_children(x)]
            x = dict(items) if type(x) is dict else type(x)(v for _, v in items)
        result = f(path, x)
        if identity:
            done[id(x)] = result
        return result

    return visit(node, ())
