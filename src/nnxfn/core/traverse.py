"""Iterations over an object graph: `iter_graph`, `find_duplicates`, `recursive_map`."""

from __future__ import annotations

import typing as tp

from nnxfn.core.graph import clone
from nnxfn.core.kinds import CONTAINERS, children_of, container_children
from nnxfn.core.registry import lookup
from nnxfn.core.variable_like import DataLeaf, VariableLike

Path = tuple[tp.Any, ...]


def iter_graph(node: tp.Any) -> tp.Iterator[tuple[Path, tp.Any]]:
    """Yield (path, value) for every node and leaf, children before parents.

    Each shared object is visited once. The children of a node are listed
    before they are visited, so setting attributes of the node a loop just
    received (as in model surgery) is safe.
    """
    seen: set[int] = set()

    def visit(x: tp.Any, path: Path) -> tp.Iterator[tuple[Path, tp.Any]]:
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


def find_duplicates(node: tp.Any) -> list[list[Path]]:
    """Groups of paths that reach the same Variable or graph node."""
    found: dict[int, list[Path]] = {}

    def visit(x: tp.Any, path: Path) -> None:
        if isinstance(x, VariableLike) or lookup(type(x)) is not None:
            paths = found.setdefault(id(x), [])
            paths.append(path)
            if len(paths) > 1:
                return
        for k, child in children_of(x):
            visit(child, path + (k,))

    visit(node, ())
    return [paths for paths in found.values() if len(paths) > 1]


def recursive_map(f: tp.Callable[[Path, tp.Any], tp.Any], node: tp.Any) -> tp.Any:
    """A copy of `node` where every value is replaced by `f(path, value)`,
    children before parents (the parent receives its mapped children).
    The original graph is not modified; sharing is preserved."""
    node = clone(node)
    done: dict[int, tp.Any] = {}

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
