"""`nnx.prefix`: per-leaf transform options (axes, shardings) computed from a node.

`prefix(node, {filter: value})` (or `prefix(node, fn(path, leaf) -> value)`)
returns a value shaped like `node` for the argument positions of `in_axes`,
`out_axes`, `in_shardings`, `out_shardings` or `in_specs`: every graph object
in `node` becomes a `PathPrefix` (its leaves' values by path), every Variable
or array leaf outside a graph object becomes its value.

>>> axes = prefix(model, {nnx.Param: 0, ...: None})          # doctest: +SKIP
>>> nnx.vmap(forward, in_axes=(axes, None))(model, x)        # doctest: +SKIP
"""

from __future__ import annotations

import typing as tp

import jax

from nnxfn import core
from nnxfn.core.variable_like import VariableLike
from nnxfn.transforms.axes import StateAxes
from nnxfn.transforms.boundary import is_node
from nnxfn.transforms.sharding import StateSharding

Path = tuple[tp.Any, ...]


class PathPrefix(StateAxes, StateSharding):
    """Values looked up by the exact path of a leaf in one graph object.

    Used where a `StateAxes` or `StateSharding` is accepted; made by `prefix`.
    """

    def __init__(self, values: tp.Mapping[Path, tp.Any], where: str = "node",
                 fn: tp.Callable[[Path, tp.Any], tp.Any] | None = None, base: Path = ()):
        self._values = dict(values)
        self._where = where
        self._fn, self._base = fn, base
        self.mapping = tuple((core.PathIn(p), v) for p, v in self._values.items())
        self._preds = self.mapping

    def resolve(self, path: tuple, leaf: tp.Any) -> tp.Any:
        try:
            return self._values[path]
        except KeyError:
            if self._fn is not None and leaf is not None:  # a leaf created since: ask the filters
                return self._fn(self._base + path, leaf)
            raise ValueError(
                f"nnx.prefix: {core.errors.path_str(path, self._where)} has no entry in this "
                f"prefix (made for the {len(self._values)} leaves the object had then). "
                "Compute the prefix from an object with the same structure, e.g. "
                "`nnx.prefix(nnx.eval_shape(make_model), ...)`."
            ) from None

    def __repr__(self) -> str:
        shown = ", ".join(f"{core.errors.path_str(p, '')}: {v!r}" for p, v in list(self._values.items())[:6])
        more = ", ..." if len(self._values) > 6 else ""
        return f"PathPrefix({{{shown}{more}}})"


def _key(k: tp.Any) -> tp.Any:
    """A JAX key-path entry as an nnx path key."""
    for attr in ("idx", "key", "name"):
        if hasattr(k, attr):
            return getattr(k, attr)
    return k


def _as_fn(filter_map: tp.Any) -> tp.Callable[[Path, tp.Any], tp.Any]:
    if not isinstance(filter_map, tp.Mapping):
        if not callable(filter_map):
            raise TypeError(
                f"nnx.prefix: filter_map must be a mapping {{filter: value}} or a function "
                f"(path, leaf) -> value, got {type(filter_map).__name__}."
            )
        return filter_map
    pairs = [(core.to_predicate(f), v) for f, v in filter_map.items()]
    filters = list(filter_map)

    def fn(path: Path, leaf: tp.Any) -> tp.Any:
        for pred, value in pairs:
            if pred(path, leaf):
                return value
        raise ValueError(
            f"nnx.prefix: no filter matches the leaf at {core.errors.path_str(path)} "
            f"({type(leaf).__name__}); filters: {filters!r}. Add `...: <value>` as the "
            "last entry to give every other leaf a value."
        )

    return fn


def prefix(node: tp.Any, filter_map: tp.Mapping[tp.Any, tp.Any] | tp.Callable[..., tp.Any], /, *,
           graph: bool | None = None) -> tp.Any:
    """Replace the leaves of `node` by prefix values (see the module docstring).

    `filter_map(path, leaf)` (or the first matching filter) gives each leaf's
    value; paths start at `node`. `graph` (Flax's mode flag) changes nothing.
    """
    fn = _as_fn(filter_map)

    def convert(jax_path: tuple, x: tp.Any) -> tp.Any:
        base = tuple(_key(k) for k in jax_path)
        if isinstance(x, VariableLike) or not is_node(x):
            return fn(base, x)
        _, pairs = core.flatten(x, copy=False)
        values = {path: fn(base + path, leaf) for path, leaf in pairs}
        where = core.errors.path_str(base, "prefix")
        return PathPrefix(values, where, fn, base)

    return jax.tree_util.tree_map_with_path(convert, node, is_leaf=is_node)


__all__ = ["prefix", "PathPrefix"]
