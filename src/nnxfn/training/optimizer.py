"""`Optimizer`: an optax transformation bound to a model's parameters.

Usage::

    optimizer = Optimizer(model, optax.adam(1e-3))        # wrt=Param
    optimizer.update(model, grads)                         # Flax >= 0.11 form
    optimizer.update(grads)                                # also works (see below)

The optimizer is a graph node like a Module, so `nnx.jit`, `nnx.split` and
checkpoints carry it. Its State is Flax's: `step` (an `OptState` with a
uint32 count of updates) and `opt_state` (the optax state, every array in
a Variable: `OptVariable`s mirror a trained Variable, e.g. Adam's `mu`, and
carry its metadata such as sharding; the others are `OptArray`s). `tx` and
`wrt` are static.

The model is *not* part of the optimizer's State. The optimizer remembers it
through a link (see `NodeImpl.links`): a reference that is kept whenever the
model is split, cloned or passed to a transform together with the optimizer.
So `update(grads)` writes to the right model eagerly, inside
`nnx.jit(train_step)(model, optimizer, ...)` (the fresh model there) and
after `nnx.clone((model, optimizer))`. An optimizer split or passed without
its model does not know it: call `update(model, grads)` there.

`update` checks the gradients against the trained Variables (by path,
shape and dtype; see `grads.py`) before it writes anything, runs
`tx.update(grads, opt_state, params, **kwargs)`, applies the updates in place
and increments `step`. Keyword arguments go to `tx.update` (e.g. `value=`,
`grad=`, `value_fn=` for `optax.scale_by_zoom_linesearch`); States among them
are unboxed like the gradients.

With `optax.inject_hyperparams`, hyperparameters are Variables in the state:
`optimizer.opt_state.hyperparams['learning_rate'][...] = 1e-4`, or the
shortcuts `optimizer.hyperparams['b1']` and `optimizer.learning_rate = 1e-4`.
"""

from __future__ import annotations

import dataclasses
import typing as tp

import jax
import jax.numpy as jnp
import optax

from nnxfn import core
from nnxfn.core import Filter, State, to_predicate, update as update_graph
from nnxfn.facade import spmd
from nnxfn.facade.module import Object, static
from nnxfn.facade.variables import OptArray, OptState, Param, Variable
from nnxfn.training.grads import Leaf, Path, match_grads, unbox

M = tp.TypeVar("M")
Metadata = tuple[tuple[str, object], ...]  # a Variable's metadata items, sorted
PyTree = tp.Any  # a pytree whose leaves are arrays or Variables
_ARRAYS = (jax.Array, jax.ShapeDtypeStruct)


class OptVariable(OptState):
    """Optimizer state that mirrors a trained Variable (e.g. Adam's `mu`); it
    carries that Variable's metadata (sharding names, ...)."""


class Optimizer(Object, tp.Generic[M]):
    """Holds an optax transformation, its state and a step counter.

    Args:
      model: the model whose `wrt` Variables are trained.
      tx: an optax `GradientTransformation`.
      wrt: a filter selecting the trained Variables (default `Param`).
      graph: Flax's mode flag, kept as `self.graph`; nnxfn has one behaviour.
    """

    def __init__(
        self,
        model: M,
        tx: optax.GradientTransformation,
        *,
        wrt: Filter = Param,
        graph: bool | None = None,
    ):
        params = _trained(model, wrt)
        if not params:
            raise ValueError(_nothing_to_train(wrt, model))
        self.step = OptState(jnp.array(0, dtype=jnp.uint32))
        self.tx = static(tx)
        self.wrt = static(wrt)
        self.graph = graph  # Flax's mode flag, kept as given (it selects no result)
        raw = State.from_flat_path([(p, unbox(v)) for p, v in params])
        self.opt_state = _box_opt_state(tx.init(raw), params)
        object.__setattr__(self, "_nnx_model", model)

    # -- the model ------------------------------------------------------------------
    def __getattr__(self, name: str) -> tp.Any:
        if name == "model":  # only reached when `model` is not a real attribute
            model = _linked_model(self)
            if model is None:
                raise AttributeError(_no_model(type(self).__name__, "optimizer.model"))
            return model
        found = getattr(type(self), name, None)
        if isinstance(found, property):  # its getter raised: raise its own message again
            return tp.cast(tp.Callable, found.fget)(self)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # -- the update ---------------------------------------------------------------
    def update(self, *args: object, **kwargs: object) -> optax.Updates:
        """`update(grads, **kw)` or `update(model, grads, **kw)`; returns the applied
        updates (raw arrays with the paths of the trained Variables)."""
        if len(args) == 2:
            model, grads = args
        elif len(args) == 1:
            model, grads = self.__dict__.get("model"), args[0]
            if model is None:
                model = _linked_model(self)
            if model is None:
                raise TypeError(_no_model(type(self).__name__, "optimizer.update(grads)"))
        else:
            raise TypeError(_bad_arity(len(args)))
        params = _trained(model, self.wrt)
        raw_params = State.from_flat_path([(p, unbox(v)) for p, v in params])
        raw_grads = match_grads(grads, params, model, self.wrt, "grads")
        extra = {
            k: match_grads(v, params, model, self.wrt, k) if isinstance(v, State) else unbox(v)
            for k, v in kwargs.items()
        }
        raw_opt = _unbox_tree(self.opt_state)
        updates, new_opt = self.tx.update(raw_grads, raw_opt, raw_params, **extra)
        new_params = optax.apply_updates(raw_params, updates)
        targets = jax.tree.leaves(self.opt_state, is_leaf=_is_var)
        values = jax.tree.leaves(new_opt)
        if len(targets) != len(values):
            raise ValueError(_state_changed(len(targets), len(values)))
        _write_params(model, params, new_params)
        for target, value in zip(targets, values):
            if isinstance(target, Variable):
                target.value = value
        self.step.value = self.step.value + jnp.uint32(1)
        return updates

    # -- hyperparameters ----------------------------------------------------------------
    @property
    def hyperparams(self) -> dict[str, Variable]:
        """The injected hyperparameters (`optax.inject_hyperparams`) as Variables.

        Write with `optimizer.hyperparams['learning_rate'][...] = 1e-4`.
        """
        found = _find_hyperparams(self.opt_state)
        if found is None:
            raise AttributeError(_no_hyperparams())
        return found

    @property
    def learning_rate(self) -> Variable:
        """Shortcut for `hyperparams['learning_rate']`; assigning sets its value."""
        return self.hyperparams["learning_rate"]

    @learning_rate.setter
    def learning_rate(self, value: jax.typing.ArrayLike | Variable) -> None:
        var = self.hyperparams["learning_rate"]
        var.value = jnp.asarray(unbox(value), dtype=jnp.asarray(var.value).dtype)


class ModelAndOptimizer(Optimizer[M]):
    """An `Optimizer` that owns its model: `.model` is part of its State (the
    layout of Flax < 0.11), and `update(grads)` trains it."""

    def __init__(
        self,
        model: M,
        tx: optax.GradientTransformation,
        *,
        wrt: Filter = Param,
        graph: bool | None = None,
    ):
        super().__init__(model, tx, wrt=wrt, graph=graph)
        self.model = model


# -- the link to the model (see `NodeImpl.links` in the core) ------------------------------
def _linked_model(opt: Optimizer) -> object:
    return getattr(opt, "_nnx_model", None)


def _links(opt: Optimizer) -> tuple[tuple[str, object], ...]:
    model = _linked_model(opt)
    return () if model is None else (("model", model),)


def _set_link(opt: Optimizer, key: str, target: object) -> None:
    object.__setattr__(opt, "_nnx_model", target)


core.register_node_type(
    dataclasses.replace(
        tp.cast(core.NodeImpl, core.registry.lookup(Object)),
        type=Optimizer,
        links=_links,
        set_link=_set_link,
    )
)


# -- State helpers ------------------------------------------------------------------
def _trained(model: object, wrt: Filter) -> list[tuple[Path, Leaf]]:
    """The (path, leaf) pairs of the model's leaves selected by `wrt`: the live
    Variables (so `update` writes them directly), or raw arrays."""
    graphdef, pairs = core.flatten_graph(model, copy=False)
    pred = to_predicate(wrt)
    boxed = core.graph.boxed_paths(graphdef)
    # leaves boxed only in the State (arrays of foreign pytrees) are written by path
    return [(p, unbox(v) if p in boxed else v) for p, v in pairs if pred(p, v)]


def _write_params(model: object, params: list[tuple[Path, Leaf]], new: State) -> None:
    """Write the new values: into the live Variables, the rest through `nnx.update`."""
    loose = []
    flat = dict(new.flat_state())
    for path, leaf in params:
        if isinstance(leaf, Variable):
            leaf.value = flat[path]
        else:
            loose.append((path, flat[path]))
    if loose:
        update_graph(model, State.from_flat_path(loose))


def _is_var(x: object) -> bool:
    return isinstance(x, Variable)


def _unbox_tree(tree: optax.OptState) -> optax.OptState:
    return jax.tree.map(unbox, tree, is_leaf=_is_var)


def _box_opt_state(opt_state: optax.OptState, params: list[tuple[Path, Leaf]]) -> optax.OptState:
    """Every array of the optax state in a Variable: an `OptVariable` with the
    parameter's metadata where it mirrors one (same path and shape), else an `OptArray`."""
    meta = {p: (tuple(getattr(unbox(v), "shape", ())), v) for p, v in params}

    def box_mirror(sub: State) -> State:
        pairs = []
        for path, x in sub.flat_state():
            shape, param = meta.get(path, (None, None))
            if not isinstance(x, _ARRAYS):
                pairs.append((path, x))
            elif shape is not None and tuple(x.shape) == shape:
                items, own = _opt_metadata(param)
                value = _placed(x, unbox(param), items, own)
                pairs.append((path, OptVariable.from_metadata(value, _mode_of(param, items))))
            else:
                pairs.append((path, OptArray(x)))
        return State.from_flat_path(pairs)

    def box(x: object) -> object:
        if isinstance(x, State):
            return box_mirror(x)
        return OptArray(x) if isinstance(x, _ARRAYS) else x

    return jax.tree.map(box, opt_state, is_leaf=lambda x: isinstance(x, State))


def to_opt_state(tree: PyTree) -> PyTree:
    """`tree` with each Variable replaced by an `OptVariable` holding its value and
    metadata (its `optimizer_sharding`, if any, as the sharding) and each other leaf
    boxed as an `OptArray`: how optimizer state mirrors the parameters."""

    def box(x: object) -> Variable:
        if isinstance(x, Variable):
            items, _ = _opt_metadata(x)
            return OptVariable.from_metadata(x.get_value(), dict(items))
        return OptArray(x)

    return jax.tree_util.tree_map(box, tree, is_leaf=lambda x: isinstance(x, Variable))


def _opt_metadata(param: Leaf) -> tuple[Metadata, bool]:
    """The metadata a mirror of `param` carries, and whether it has its own
    sharding: `optimizer_sharding` (if set) replaces the parameter's annotation."""
    if not isinstance(param, Variable):
        return (), False
    items = dict(param.metadata_items())
    own = "optimizer_sharding" in items
    if own:
        items[spmd.spec_key(items) or "out_sharding"] = items.pop("optimizer_sharding")
    return tuple(sorted(items.items())), own


def _mode_of(param: Leaf, items: Metadata) -> dict[str, object]:
    """`items` plus the parameter's `hijax`/`ref` mode: a mirror is kept like
    its parameter (Flax: `OptVariable(value, **param.get_metadata())`)."""
    if not isinstance(param, Variable):
        return dict(items)
    return {**dict(items), "hijax": param.hijax, "ref": param.ref}


def _placed(x: Leaf, param: Leaf, items: Metadata, own: bool) -> Leaf:
    """A moment laid out like its parameter (the param's sharding for concrete
    arrays), or as its annotation says inside a trace or with an
    `optimizer_sharding` (if a mesh is known)."""
    meta = dict(items)
    if isinstance(x, jax.core.Tracer) or own:
        return spmd.shard_value(x, meta) if spmd.spec_key(meta) else x
    if isinstance(x, jax.Array) and isinstance(param, jax.Array) and not isinstance(param, jax.core.Tracer):
        if not x.sharding.is_equivalent_to(param.sharding, x.ndim):
            return jax.device_put(x, param.sharding)
    return x


def _find_hyperparams(opt_state: optax.OptState) -> dict[str, Variable] | None:
    """The `hyperparams` dict of the outermost inject_hyperparams state, if any."""
    if opt_state is None:
        return None
    stack = [opt_state]
    while stack:
        node = stack.pop(0)
        hp = getattr(node, "hyperparams", None)
        if isinstance(hp, dict) and not isinstance(node, Variable):
            return hp
        if isinstance(node, tuple):
            stack.extend(node)
    return None


def _variable_types(model: object) -> str:
    counts: dict[str, int] = {}
    for _, leaf in core.state(model).flat_state():
        name = type(leaf).__name__ if isinstance(leaf, Variable) else "raw array"
        counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{n} x{c}" for n, c in sorted(counts.items())) or "no Variables at all"


# -- error messages -----------------------------------------------------------------
def _nothing_to_train(wrt: Filter, model: object) -> str:
    hint = (
        " A string filter selects Variables by *tag* (as in Flax NNX), not a Linen "
        "collection name: for the parameters write `wrt=nnx.Param`."
        if isinstance(wrt, str)
        else ""
    )
    return (
        f"nnx.Optimizer: wrt={wrt!r} matches none of the model's Variables, so the "
        f"optimizer would train nothing. The {type(model).__name__} holds: "
        f"{_variable_types(model)}.{hint} Pass a filter that selects the Variables to "
        "train, e.g. `nnx.Optimizer(model, tx, wrt=nnx.Param)`."
    )


def _no_model(cls: str, where: str) -> str:
    return (
        f"{where}: this {cls} does not know its model here. It remembers the model it "
        "was built with, but not through `nnx.split`/`nnx.merge` or a transform that "
        "did not receive the model too (the model is not part of the optimizer's "
        "State). Pass the model: `optimizer.update(model, grads)`, and give it to the "
        "transform, e.g. `nnx.jit(train_step)(model, optimizer, x, y)`; or use "
        "`nnx.ModelAndOptimizer`, which holds the model in its State."
    )


def _bad_arity(n: int) -> str:
    return (
        f"Optimizer.update takes `(grads)` or `(model, grads)`, got {n} positional "
        "arguments. Pass options to optax as keywords, e.g. "
        "`optimizer.update(model, grads, value=loss)`."
    )


def _state_changed(expected: int, got: int) -> str:
    return (
        f"Optimizer.update: tx.update returned a state with {got} leaves but the "
        f"optimizer holds {expected}. The optax transformation must keep its state "
        "structure; rebuild the optimizer if the model's parameters changed."
    )


def _no_hyperparams() -> str:
    return (
        "Optimizer.hyperparams: this optimizer has no injected hyperparameters. "
        "Build the transformation with `optax.inject_hyperparams`, e.g. "
        "`tx = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)`."
    )
