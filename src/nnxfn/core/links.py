"""Non-owning references between objects of one graph (`NodeImpl.links`).

An optimizer refers to its model without owning it: the link is not walked and
holds no State, but it is kept in the GraphDef when its target is part of the
same flatten, and re-made by `unflatten`.
"""

from __future__ import annotations

import typing as tp

from nnxfn.core.registry import NodeImpl, lookup


def find_links(linking: list[tuple[int, tp.Any]], index: dict[int, int]) -> tuple:
    """The links (node index, key, target index) of the `linking` nodes whose
    target is in `index` (id -> GraphDef index); links leaving the graph are dropped."""
    found = []
    for i, node in linking:
        impl = tp.cast(NodeImpl, lookup(type(node)))
        for key, target in tp.cast(tp.Callable, impl.links)(node):
            j = index.get(id(target))
            if j is not None:
                found.append((i, key, j))
    return tuple(found)


def apply_links(links: tuple, objects: tp.Mapping[int, tp.Any] | tp.Sequence) -> None:
    """Re-make the links of a GraphDef between the objects `unflatten` built."""
    for i, key, j in links:
        node = objects[i]
        impl = tp.cast(NodeImpl, lookup(type(node)))
        tp.cast(tp.Callable, impl.set_link)(node, key, objects[j])
