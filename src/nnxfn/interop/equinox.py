"""Equinox interoperability.

Equinox modules (and any other JAX pytree) are ordinary attributes of nnxfn
Modules; see `classify.py` for how their arrays are boxed in a State and
`view.py` for the functional view. This file holds what is specific to
Equinox files: loading an Equinox checkpoint into an attribute.
"""

from __future__ import annotations

import typing as tp
from pathlib import Path

from nnxfn.core import errors
from nnxfn.core.graph import children_of
from nnxfn.core.writes import update
from nnxfn.core.state import State


def load_equinox(path_or_file: str | Path | tp.BinaryIO, node: object, *where: tp.Hashable) -> tp.Any:
    """Load a checkpoint written by `eqx.tree_serialise_leaves(f, eqx_module)`
    into the Equinox attribute of `node` at `where` (attribute names / list
    indices), matching fields by structure, never by sorted name; returns the
    loaded Equinox module (also set on its parent).

    >>> import io
    >>> class Net(nnx.Module):
    ...     def __init__(self, seed):
    ...         self.encoder = eqx.nn.Linear(2, 3, key=jax.random.key(seed))
    >>> model, other = Net(0), Net(1)
    >>> f = io.BytesIO()
    >>> eqx.tree_serialise_leaves(f, other.encoder)
    >>> _ = f.seek(0)
    >>> loaded = nnx.interop.load_equinox(f, model, "encoder")
    >>> bool(jnp.all(model.encoder.weight == other.encoder.weight))
    True
    """
    import equinox as eqx

    if not where:
        raise TypeError(
            "load_equinox: say which attribute to load into, e.g. "
            "`nnx.interop.load_equinox(f, model, 'encoder')`."
        )
    parent = node
    for key in where[:-1]:
        parent = _child(parent, key, where)
    like = _child(parent, where[-1], where)
    loaded = eqx.tree_deserialise_leaves(path_or_file, like)
    update(node, State.from_flat_path({tuple(where): loaded}))  # rebuilds immutable parents
    return loaded


def _child(node: object, key: tp.Hashable, where: tuple[tp.Hashable, ...]) -> object:
    for k, v in children_of(node):
        if k == key:
            return v
    raise KeyError(
        f"load_equinox: {errors.path_str(where, 'model')} does not exist (there is no "
        f"{key!r}). Pass the attribute names/indices of the Equinox module to load into."
    )
