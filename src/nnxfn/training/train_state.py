"""`TrainState`: Flax's functional train state (graphdef, params, opt_state, step, tx).

An immutable dataclass and JAX pytree for the functional style: the model is
kept as `graphdef` + State(s), and every step returns a new TrainState::

    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)

    class TrainState(nnx.TrainState):
        batch_stats: nnx.State                 # subclasses add fields

    state = TrainState.create(graphdef, params=params, tx=optax.sgd(0.1),
                              batch_stats=batch_stats)
    y, (graphdef, new) = state.apply('params', 'batch_stats')(x)
    state = state.apply_gradients(grads)

Subclasses become frozen dataclasses and pytrees by themselves. `graphdef`
and `tx` (and any field declared with `field(pytree_node=False)`) are
static; the others are pytree children.
"""

from __future__ import annotations

import dataclasses
import typing as tp

import jax
import jax.numpy as jnp
import optax

from nnxfn.core import GraphDef, State, merge, split

M = tp.TypeVar("M")
TS = tp.TypeVar("TS", bound="TrainState")


def field(*, pytree_node: bool = True, **kwargs: tp.Any) -> tp.Any:
    """A dataclass field; `pytree_node=False` makes it static (not a pytree child)."""
    metadata = {**kwargs.pop("metadata", {}), "pytree_node": pytree_node}
    return dataclasses.field(metadata=metadata, **kwargs)


def _make_pytree_dataclass(cls: type) -> type:
    if "__dataclass_fields__" not in cls.__dict__:
        dataclasses.dataclass(frozen=True)(cls)
    fields = dataclasses.fields(cls)
    data = [f.name for f in fields if f.metadata.get("pytree_node", True)]
    meta = [f.name for f in fields if not f.metadata.get("pytree_node", True)]
    jax.tree_util.register_dataclass(cls, data_fields=data, meta_fields=meta)
    return cls


@tp.dataclass_transform(frozen_default=True, field_specifiers=(field,))
@dataclasses.dataclass(frozen=True)
class TrainState(tp.Generic[M]):
    """The state of one training run in functional form (see the module docstring)."""

    graphdef: GraphDef = field(pytree_node=False)
    params: State = field()
    opt_state: optax.OptState = field()
    step: jax.Array = field()
    tx: optax.GradientTransformation = field(pytree_node=False)

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        _make_pytree_dataclass(cls)

    @classmethod
    def create(
        cls: type[TS],
        graphdef: GraphDef,
        *,
        params: State,
        tx: optax.GradientTransformation,
        step: int = 0,
        **kwargs: object,
    ) -> TS:
        """A new state with `tx.init(params)` and `step`; `kwargs` fill the extra fields."""
        return cls(
            graphdef=graphdef,
            params=params,
            opt_state=tx.init(params),
            step=jnp.asarray(step),
            tx=tx,
            **kwargs,
        )

    def replace(self: TS, **changes: tp.Any) -> TS:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def apply(self, state: State | str, *states: State | str) -> ApplyCaller:
        """Call the model rebuilt from `graphdef` and the given States (or the names
        of State fields): `out, (graphdef, state) = ts.apply('params')(x)`;
        `ts.apply('params').encoder(x)` calls a sub-module or method."""
        found = []
        for s in (state, *states):
            if isinstance(s, str):
                value = getattr(self, s)
                if not isinstance(value, State):
                    raise TypeError(_not_a_state(type(self).__name__, s, value))
                s = value
            found.append(s)
        return ApplyCaller(self.graphdef, tuple(found), ())

    def apply_gradients(self: TS, grads: State, **kwargs: object) -> TS:
        """One optax step on `params`; `kwargs` replace other fields too."""
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        params = optax.apply_updates(self.params, updates)
        return self.replace(params=params, opt_state=opt_state, step=self.step + 1, **kwargs)


_make_pytree_dataclass(TrainState)


# One step from the model to the called method: an attribute or an item.
Step = tp.Union[tuple[tp.Literal["attr"], str], tuple[tp.Literal["item"], tp.Hashable]]


class ApplyCaller:
    """What `TrainState.apply` returns: attribute/item access picks the method,
    a call runs it on a freshly merged model and returns
    `(output, (graphdef, state))` with the model's state after the call."""

    def __init__(self, graphdef: GraphDef, states: tuple[State, ...], path: tuple[Step, ...]):
        self._graphdef, self._states, self._path = graphdef, states, path

    def __getattr__(self, name: str) -> ApplyCaller:
        if name.startswith("__"):
            raise AttributeError(name)
        return ApplyCaller(self._graphdef, self._states, self._path + (("attr", name),))

    def __getitem__(self, key: tp.Hashable) -> ApplyCaller:
        return ApplyCaller(self._graphdef, self._states, self._path + (("item", key),))

    def __call__(self, *args: object, **kwargs: object) -> tuple[tp.Any, tuple[GraphDef, State]]:
        model = merge(self._graphdef, *self._states, copy=True)  # functional: `ts` keeps its state
        fn = model
        for step in self._path:
            fn = getattr(fn, step[1]) if step[0] == "attr" else fn[step[1]]
        out = fn(*args, **kwargs)
        return out, split(model)


def _not_a_state(cls: str, name: str, value: object) -> str:
    return (
        f"{cls}.apply({name!r}): the field {name!r} holds a {type(value).__name__}, not a "
        "State. Pass State fields (e.g. 'params') or States themselves."
    )
