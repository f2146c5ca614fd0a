"""Flax's tree-mode GraphDef: what `split(node, graph=False)` returns.

In tree mode a node is a plain JAX pytree with Variables as leaves:
`jax.tree_util.tree_flatten_with_path(node, is_leaf=<is a Variable>)`. The
GraphDef holds one `TreeNodeDef(type, treedef, path_index)` record, then one
`VariableDef` per Variable leaf; the leaves are in sorted path order and
`path_index` maps each to its place in the treedef. Modules are one-level
pytrees (the facade registers them), so the treedef is exactly how JAX sees
the Module. The callers check first what tree mode rejects (shared
Variables, cycles, `pytree=False` objects; see `treemode.py`).

>>> import jax.numpy as jnp
>>> from nnxfn.core.variable_like import VariableLike
>>> graphdef, pairs = flatten_tree_mode({"b": jnp.ones(1), "a": (1, 2)})
>>> [path for path, _ in pairs]
[('a', 0), ('a', 1), ('b',)]
>>> unflatten_tree_mode(graphdef, [leaf for _, leaf in pairs])["a"]
(1, 2)
"""

from __future__ import annotations

import dataclasses
import typing as tp

import jax

from nnxfn.core.graphdef import GraphDef, VariableDef
from nnxfn.core.kinds import key_of
from nnxfn.core.registry import key_order
from nnxfn.core.variable_like import VariableLike

Key = tp.Hashable
Path = tuple[Key, ...]
Leaf = tp.Any  # an array, a Variable or any other leaf


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True, slots=True)
class TreeNodeDef:
    """The root record of a tree-mode GraphDef: the node's type, its JAX
    treedef (Variables as leaves) and `(path, index in the treedef)` per leaf,
    in sorted path order."""

    type: type
    treedef: jax.tree_util.PyTreeDef
    path_index: tuple[tuple[Path, int], ...]

    def with_no_outer_index(self) -> TreeNodeDef:
        return self

    def with_same_outer_index(self) -> TreeNodeDef:
        return self

    def with_matching_outer_index(self, other: object) -> TreeNodeDef:
        return self


class TreeGraphDef(GraphDef):
    """A GraphDef made in tree mode: `nodes` is `[TreeNodeDef, VariableDef, ...]`."""

    __slots__ = ("tree", "variables")
    tree: TreeNodeDef
    variables: tuple[VariableDef, ...]

    @classmethod
    def make(cls, tree: TreeNodeDef, variables: tuple[VariableDef, ...]) -> TreeGraphDef:
        graphdef = object.__new__(cls)
        graphdef._root = tree
        graphdef.num_leaves = len(tree.path_index)
        graphdef._hash = None
        graphdef._ops = None
        graphdef._plan = None
        graphdef.links = ()
        graphdef.tree = tree
        graphdef.variables = variables
        return graphdef

    @property
    def ops(self) -> list:
        raise TypeError(
            "This GraphDef was made in tree mode (graph=False) and has no graph program: "
            "rebuild the node with `nnx.merge(graphdef, state)`, or split in graph mode."
        )

    @property
    def nodes(self) -> list[tp.Any]:
        return [self.tree, *self.variables]

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash((self.tree, self.variables))
        return self._hash

    def __eq__(self, other: object) -> bool:
        return self is other or (
            type(other) is TreeGraphDef and self.tree == other.tree and self.variables == other.variables
        )

    def __reduce__(self):
        return (TreeGraphDef.make, (self.tree, self.variables))

    def __repr__(self) -> str:
        names = ", ".join(f"{'/'.join(map(str, p))}: {v.type.__name__}" for (p, _), v in self._described())
        return f"GraphDef(tree mode, {self.tree.type.__name__}, {self.num_leaves} leaves; {names})"

    def _described(self) -> list:
        by_index = {v.index: v for v in self.variables}
        return [(pi, by_index[i]) for i, pi in enumerate(self.tree.path_index) if i in by_index]


jax.tree_util.register_static(TreeGraphDef)


def _is_variable(x: object) -> bool:
    return isinstance(x, VariableLike)


def _order(path: Path) -> tuple:
    return tuple(key_order(k) for k in path)


def flatten_tree_mode(node: object) -> tuple[TreeGraphDef, list[tuple[Path, Leaf]]]:
    """The tree-mode GraphDef of `node` and its `(path, leaf)` pairs in sorted
    path order; Variable leaves are the node's own Variables."""
    pairs, treedef = jax.tree_util.tree_flatten_with_path(node, is_leaf=_is_variable)
    paths = [tuple(key_of(k) for k in jax_path) for jax_path, _ in pairs]
    order = sorted(range(len(pairs)), key=lambda i: _order(paths[i]))
    variables = []
    out = []
    for position, i in enumerate(order):
        _, leaf = pairs[i]
        if isinstance(leaf, VariableLike):
            variables.append(VariableDef(type(leaf), position, leaf.metadata_items()))
        out.append((paths[i], leaf))
    tree = TreeNodeDef(type(node), treedef, tuple((paths[i], i) for i in order))
    return TreeGraphDef.make(tree, tuple(variables)), out


def unflatten_tree_mode(graphdef: TreeGraphDef, leaves: tp.Sequence[Leaf], *, copy: bool = False) -> Leaf:
    """Rebuild the node from its leaves in sorted path order. A Variable leaf
    is used as it is (a copy with `copy=True`); a raw value where the
    GraphDef has a Variable is boxed in that Variable type."""
    tree = graphdef.tree
    if len(leaves) != len(tree.path_index):
        raise ValueError(
            f"merge: the tree-mode GraphDef has {len(tree.path_index)} leaves, got {len(leaves)}. "
            "Pass the states `nnx.split(..., graph=False)` returned with this GraphDef."
        )
    boxes = {v.index: v for v in graphdef.variables}
    placed: list = [None] * len(leaves)
    for position, ((_, index), leaf) in enumerate(zip(tree.path_index, leaves)):
        vdef = boxes.get(position)
        if vdef is not None:
            if isinstance(leaf, VariableLike):
                if copy:
                    leaf = type(leaf).from_parts(leaf.raw_value, leaf.metadata_items())
            else:
                leaf = vdef.type.from_parts(leaf, vdef.metadata)
        placed[index] = leaf
    return tree.treedef.unflatten(placed)


def leaves_by_path(graphdef: TreeGraphDef, flat: tp.Mapping[Path, Leaf]) -> list[Leaf]:
    """The leaves of `flat` ({path: leaf}) in the GraphDef's order; raises
    naming the paths that are missing or not in the GraphDef."""
    paths = [path for path, _ in graphdef.tree.path_index]
    missing = [p for p in paths if p not in flat]
    extra = sorted(set(flat) - set(paths), key=_order)
    if missing or extra:
        raise ValueError(
            "merge: the states do not fit the tree-mode GraphDef"
            + (f"; missing paths: {missing}" if missing else "")
            + (f"; unexpected paths: {extra}" if extra else "")
            + ". Pass the states `nnx.split(..., graph=False)` returned with this GraphDef."
        )
    return [flat[p] for p in paths]
