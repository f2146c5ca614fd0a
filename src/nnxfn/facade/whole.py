"""A Module flattened whole for JAX: used when its subtree shares objects.

`jaxtree.py` flattens one level per object; an object whose subtree reaches
a Module or Variable twice (shared sub-modules, tied weights, cycles) is
flattened here instead. JAX sees its deduplicated State leaves (each shared
Variable once), nested in `Level` nodes so key paths still read
`.layers[0].kernel.value`; foreign pytrees (Equinox modules) are children
whole. `unflatten_whole` rebuilds the graph with its sharing through the core's
one unflatten.
"""

from __future__ import annotations

import typing as tp

import jax

from nnxfn import core
from nnxfn.core import caches
from nnxfn.facade import context
from nnxfn.facade.pytreeview import is_object


class Level:
    """One level of a Module's JAX key path below the Module itself (the
    `layers` then `[0]` in `.layers[0].b`): JAX sees one key per level while
    the Module still flattens to its deduplicated State leaves."""

    __slots__ = ("keys", "children")

    def __init__(self, keys: tuple, children: list):
        self.keys = keys
        self.children = children

    def __repr__(self) -> str:
        return f"Level({list(zip(self.keys, self.children))!r})"


jax.tree_util.register_pytree_with_keys(
    Level,
    lambda level: (list(zip(level.keys, level.children)), level.keys),
    lambda keys, children: Level(keys, list(children)),
    lambda level: (level.children, level.keys),
)

# aux -> nesting template: a list of ints (leaf positions) and (keys, template) pairs
_TEMPLATES: caches.CacheTable[tuple, tuple[tuple, list]] = caches.CacheTable("facade.whole.templates")


def _key_of(node: object, k: object) -> tp.Any:
    if type(k) is int and (
        isinstance(node, (list, tuple)) or type(node).__name__ == "List" and hasattr(node, "_items")
    ):
        return jax.tree_util.SequenceKey(k)
    if isinstance(node, dict):
        return jax.tree_util.DictKey(k)
    return jax.tree_util.GetAttrKey(str(k))


def _child_at(node: tp.Any, k: tp.Any) -> tp.Any:
    if node is None:
        return None
    try:
        if isinstance(node, (list, tuple, dict)):
            return node[k]
        if is_object(node) and hasattr(node, "_items") and isinstance(k, int):
            return node._items[k]
        if is_object(node):
            return node.__dict__.get(k)
        for ck, cv in core.graph.children_of(node):
            if ck == k:
                return cv
    except Exception:
        pass
    return None


def _template(obj: object, paths: tuple) -> tuple[tuple, list]:
    """(top-level keys, entries) with entries a leaf index or (keys, entries)."""

    def build(node: object, items: list, depth: int) -> tuple[tuple, list]:
        keys: list = []
        entries: list = []
        i = 0
        while i < len(items):
            idx, path = items[i]
            k = path[depth]
            key = _key_of(node, k)
            if len(path) == depth + 1:
                keys.append(key)
                entries.append(idx)
                i += 1
                continue
            j = i
            while j < len(items) and len(items[j][1]) > depth + 1 and items[j][1][depth] == k:
                j += 1
            keys.append(key)
            entries.append(build(_child_at(node, k), items[i:j], depth + 1))
            i = j
        return tuple(keys), entries

    return build(obj, list(enumerate(paths)), 0)


def _nest(entries: list, leaves: list) -> list:
    return [leaves[e] if type(e) is int else Level(e[0], _nest(e[1], leaves)) for e in entries]


def _flat_leaves(children: tp.Iterable, out: list) -> list:
    for c in children:
        if type(c) is Level:
            _flat_leaves(c.children, out)
        else:
            out.append(c)
    return out


def _nested(obj: object, leaves: list, aux: tuple):
    template = _TEMPLATES.get(aux)
    if template is None:
        if len(_TEMPLATES) > 4096:
            _TEMPLATES.clear()
        template = _TEMPLATES.put(aux, _template(obj, aux[1]))
    keys, entries = template
    return keys, _nest(entries, leaves), (*aux, keys)


def _leaves(obj: object):
    """JAX sees the State leaves (Variables, raw arrays), each once even if
    shared; foreign pytrees (Equinox modules) are children whole, so
    `is_leaf=lambda x: isinstance(x, eqx.nn.Linear)` and `eqx.tree_at` see them."""
    memo = obj.__dict__.get("_nnx_pytree")
    if memo is not None and memo[3] == context.structure_epoch() and caches.enabled():
        # Made by `unflatten` and structurally unchanged since: keep its
        # leaf slots even if they now hold None/bools (e.g. `eqx.partition`).
        pairs = core.graph.flatten_like(memo[0], obj, memo[2])
        if pairs is not None:
            return [leaf for _, leaf in pairs], memo[:3]
    whole: dict = {}
    graphdef, pairs = core.flatten_graph(obj, copy=False, whole_pytrees=whole)
    if whole:
        pairs = tp.cast(list, core.graph.flatten_like(graphdef, obj, whole))
    return [leaf for _, leaf in pairs], (graphdef, tuple(p for p, _ in pairs), frozenset(whole))


def flatten_whole(obj: object):
    leaves, aux = _leaves(obj)
    _, children, aux = _nested(obj, leaves, aux)
    return children, aux


def flatten_whole_with_keys(obj: object):
    leaves, aux = _leaves(obj)
    keys, children, aux = _nested(obj, leaves, aux)
    return list(zip(keys, children)), aux


def _is_tracer(x: object) -> bool:
    return isinstance(x, jax.core.Tracer)


def unflatten_whole(aux: tuple, children: tp.Iterable) -> object:
    graphdef, paths, whole, _ = aux
    aux = aux[:3]
    leaves = _flat_leaves(children, [])
    traced = False
    for path, leaf in zip(paths, leaves):
        if getattr(leaf, "_frame", None) is context.FOREIGN:
            context.remember_foreign_path(leaf, path)
            traced = True
        elif not traced and (
            _is_tracer(leaf) or (path in whole and any(map(_is_tracer, jax.tree.leaves(leaf))))
        ):
            traced = True
    try:  # by position (faster); by path for whole pytrees and for the errors
        if whole:
            raise core.program.LeafMismatch
        obj = core.program.unflatten_leaves(graphdef, leaves, copy=False)
    except core.program.LeafMismatch:
        obj = core.unflatten_graph(graphdef, dict(zip(paths, leaves)), copy=False)
    if traced:  # rebuilt inside a non-nnxfn transform: attribute writes would be lost
        for path, node in core.iter_graph(obj):
            if is_object(node) and node.__dict__.get("_nnx_frame") is None:
                object.__setattr__(node, "_nnx_frame", context.FOREIGN)
                context.remember_foreign_path(node, path)
    if is_object(obj):
        object.__setattr__(obj, "_nnx_pytree", (*aux, context.structure_epoch()))
    return obj
