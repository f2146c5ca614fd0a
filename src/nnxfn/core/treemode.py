"""What Flax's tree mode (`graph=False`) and `graph_updates=False` reject.

Flax's tree mode treats objects as plain JAX pytrees, so it rejects input a
pytree cannot express: the same Variable (or `jax.Ref`) reached by two
paths, reference cycles, and objects declared `pytree=False`. When the
caller *asks* for tree mode, nnxfn raises the same errors, so code written
against Flax's tree mode fails the same way (the transforms' tree-mode
*results* are made in `transforms/`). Nothing here runs unless a mode was
asked for: the default paths never call it.

>>> import nnxfn as nnx, jax.numpy as jnp
>>> v = nnx.Param(jnp.zeros(1))
>>> check_tree([("node", [v, v])], "split")
Traceback (most recent call last):
...
ValueError: split with graph=False: Duplicate Param found at paths:
...
"""

from __future__ import annotations

import typing as tp

import jax

from nnxfn.core.errors import path_str
from nnxfn.core.kinds import children_of
from nnxfn.core.modes import set_graph_mode, set_graph_updates
from nnxfn.core.registry import lookup
from nnxfn.core.variable_like import DataLeaf, VariableLike

Path = tuple[tp.Hashable, ...]


# -- which mode was asked for ------------------------------------------------------------
def is_tree_mode(graph: bool | None) -> bool:
    """True if Flax would run in tree mode: `graph=False`, or `graph=None` under
    `nnx.set_graph_mode(False)`."""
    if graph is None:
        return not set_graph_mode.current_value()
    return not graph


def skips_graph_updates(graph: bool | None, graph_updates: bool | None) -> bool:
    """True if Flax would not propagate graph updates: tree mode, `graph_updates=False`,
    or `graph_updates=None` under `nnx.set_graph_updates(False)`."""
    if is_tree_mode(graph):
        return True
    if graph_updates is None:
        return not set_graph_updates.current_value()
    return not graph_updates


def mode_words(graph: bool | None, graph_updates: bool | None) -> str:
    """How to name the mode asked for in a message (`graph=False` / `graph_updates=False`)."""
    return "graph=False" if is_tree_mode(graph) else "graph_updates=False"


# -- messages ----------------------------------------------------------------------------
def _fix_api(fn_name: str) -> str:
    return (
        "Fix it in one of these ways:\n"
        "  1. Remove the duplicate: give each place its own Variable (e.g. `nnx.clone(v)`).\n"
        f"  2. Use graph mode, which keeps the sharing: `nnx.{fn_name}(..., graph=True)` "
        "(the default, outside `nnx.set_graph_mode(False)`)."
    )


def duplicate(fn_name: str, obj: object, first: str, second: str) -> str:
    return (
        f"{fn_name} with graph=False: Duplicate {type(obj).__name__} found at paths:\n"
        f"  - {first}\n  - {second}\n"
        "Tree mode (graph=False) does not support shared references: a JAX pytree has no "
        "identity, so the two paths would become two separate copies. " + _fix_api(fn_name)
    )


def cycle(fn_name: str, obj: object, first: str, second: str) -> str:
    return (
        f"{fn_name} with graph=False: Cycle detected for {type(obj).__name__} found at paths:\n"
        f"  - {first}\n  - {second}\n"
        "Cycles are not supported with graph=False: a JAX pytree cannot contain itself. "
        f"Break the cycle, or use graph mode: `nnx.{fn_name}(..., graph=True)`."
    )


def not_a_pytree(fn_name: str, obj: object, where: str | None) -> str:
    at = f" Found at path: {where}." if where else ""
    return (
        f"Cannot use '{fn_name}' with graph=False on a '{type(obj).__name__}' instance that "
        f"has pytree=False.{at} Pytree subclasses with pytree=False are not registered as "
        "JAX pytrees, so tree mode cannot walk them. Use graph mode "
        f"(`nnx.{fn_name}(..., graph=True)`), or declare the class with pytree=True."
    )


# -- the walk ------------------------------------------------------------------------------
class Found(tp.NamedTuple):
    """A Variable or `jax.Ref` met by `find_ref_leaves`: its first path and the object."""

    path: str
    obj: object


def is_ref_leaf(x: object) -> bool:
    """Objects with identity that a pytree holds as leaves: Variables and `jax.Ref`s."""
    return isinstance(x, VariableLike) or isinstance(x, jax.Ref)


def _not_pytree(x: object) -> bool:
    return getattr(type(x), "_nnx_is_pytree", True) is False


def find_ref_leaves(
    roots: tp.Iterable[tuple[str, tp.Any]],
    fn_name: str,
    *,
    tree: bool = True,
    unique: bool | None = None,
    on_duplicate: tp.Callable[[tp.Any, str, str], str] | None = None,
    seen: dict[int, Found] | None = None,
) -> dict[int, Found]:
    """Visit every value under each `(root name, value)`; return the Variables and
    `jax.Ref`s found, by id (with the first path that reached them).

    tree=True reads the roots as Flax's tree mode does: graph objects are walked
    again at every path (no identity), so a cycle or a `pytree=False` object
    raises ValueError. tree=False walks each graph object once, as graph mode.
    unique (default: `tree`): a Variable reached twice raises ValueError
    (`on_duplicate(obj, first path, second path)` builds the message). `seen`
    carries the Variables of an earlier walk.
    """
    unique = tree if unique is None else unique
    seen = {} if seen is None else seen
    dup = on_duplicate or (lambda obj, a, b: duplicate(fn_name, obj, a, b))
    visited: set[int] = set()
    for name, root in roots:
        # (path, value, exiting): exiting marks the end of an object's subtree
        stack: list[tuple[Path, tp.Any, bool]] = [((), root, False)]
        open_paths: dict[int, Path] = {}
        while stack:
            path, x, exiting = stack.pop()
            if exiting:
                open_paths.pop(id(x), None)
                continue
            if type(x) is DataLeaf:
                x = x.value
            if is_ref_leaf(x):
                prev = seen.get(id(x))
                here = path_str(path, name)
                if prev is None:
                    seen[id(x)] = Found(here, x)
                elif unique:
                    raise ValueError(dup(x, prev.path, here))
                continue
            if tree and _not_pytree(x):
                raise ValueError(not_a_pytree(fn_name, x, path_str(path, name) if path else None))
            children = children_of(x)
            if not children:
                continue
            if not tree:
                if lookup(type(x)) is not None:
                    if id(x) in visited:
                        continue
                    visited.add(id(x))
            elif id(x) in open_paths:
                raise ValueError(cycle(fn_name, x, path_str(open_paths[id(x)], name), path_str(path, name)))
            else:
                open_paths[id(x)] = path
                stack.append((path, x, True))
            stack.extend((path + (k,), c, False) for k, c in reversed(children))
    return seen


def check_tree(roots: tp.Iterable[tuple[str, tp.Any]], fn_name: str) -> None:
    """Raise ValueError (see `find_ref_leaves`) if Flax's tree mode would reject the roots."""
    find_ref_leaves(roots, fn_name, tree=True)


def check_node(node: object, fn_name: str, graph: bool | None) -> None:
    """`check_tree` for one node, only if tree mode was asked for (`graph`)."""
    if is_tree_mode(graph):
        find_ref_leaves([("node", node)], fn_name, tree=True)


__all__ = [
    "is_tree_mode",
    "skips_graph_updates",
    "mode_words",
    "find_ref_leaves",
    "check_tree",
    "check_node",
    "Found",
]
