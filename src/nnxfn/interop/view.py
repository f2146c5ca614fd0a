"""The explicit functional view of an object graph: `as_pytree`/`from_pytree`.

`view = nnx.as_pytree(model)` is an immutable JAX pytree holding the
GraphDef (static, hashable: the pytree's aux data) and the State (the
children). Any JAX or Equinox transform can carry it: nothing in it is
mutable by reference, so nothing can be lost. Shared sub-modules and tied
weights are one leaf, and `nnx.from_pytree(view)` restores the sharing.
`nnx.update(model, view)` commits a (new) view back onto the live model::

    @eqx.filter_jit
    def step(view, x):
        model = nnx.from_pytree(view)
        y = model(x)                       # Dropout/BatchNorm/Rngs update freely
        return y, nnx.as_pytree(model)

    y, view = step(nnx.as_pytree(model), x)
    nnx.update(model, view)
"""

from __future__ import annotations

import typing as tp

import jax

from nnxfn import core
from nnxfn.core.writes import register_state_reader
from nnxfn.core.graphdef import GraphDef
from nnxfn.core.state import State


class PytreeView:
    """`(graphdef, state)` of an object graph as one frozen pytree."""

    __slots__ = ("graphdef", "state")
    graphdef: GraphDef
    state: State

    def __init__(self, graphdef: GraphDef, state: State):
        object.__setattr__(self, "graphdef", graphdef)
        object.__setattr__(self, "state", state)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(
            f"a PytreeView is immutable (cannot set {name!r}). Build the model with "
            "`nnx.from_pytree(view)`, change it, and take a new `nnx.as_pytree(model)`."
        )

    def __iter__(self) -> tp.Iterator[GraphDef | State]:
        return iter((self.graphdef, self.state))

    def __repr__(self) -> str:
        return f"PytreeView({self.graphdef!r}, {self.state!r})"


def _flatten_with_keys(v: PytreeView) -> tuple[tuple[tuple[jax.tree_util.GetAttrKey, State]], GraphDef]:
    return ((jax.tree_util.GetAttrKey("state"), v.state),), v.graphdef


def _unflatten(graphdef: GraphDef, children: tp.Iterable[State]) -> PytreeView:
    (state,) = children
    return PytreeView(graphdef, state)


jax.tree_util.register_pytree_with_keys(
    PytreeView, _flatten_with_keys, _unflatten, lambda v: ((v.state,), v.graphdef)
)


def as_pytree(node: object) -> PytreeView:
    """A frozen `(graphdef, state)` pytree of `node` (a copy: later changes to
    `node` do not show in it, and it never changes `node`)."""
    graphdef, state, _ = core.walker.walk_graph(node, copy=True)  # `split` would share the Variables
    return PytreeView(graphdef, state)


def from_pytree(view: PytreeView) -> tp.Any:
    """Fresh objects built from a view (sharing and cycles restored)."""
    if not isinstance(view, PytreeView):
        raise TypeError(
            f"from_pytree expects the result of `nnx.as_pytree(model)`, got a "
            f"{type(view).__name__}. For a (graphdef, state) pair use `nnx.merge(graphdef, state)`."
        )
    return core.merge(view.graphdef, view.state)


# `nnx.update(model, view)` writes the view's State into `model` in place.
register_state_reader(PytreeView, lambda view: view.state)
