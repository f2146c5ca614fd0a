"""`Optimizer`: an optax transformation bound to a model's parameters.

Usage::

    optimizer = Optimizer(model, optax.adam(1e-3))        # wrt=Param
    optimizer.update(model, grads)                         # Flax >= 0.11 form
    optimizer.update(grads)                                # also works (see below)

The optimizer is a graph node like a Module, so `nnx.jit`, `nnx.split` and
checkpoints carry it. It holds:

- `step`: an `OptState` Variable with a uint32 counter of updates;
- `opt_state`: the optax state, every array leaf wrapped in a Variable.
  Leaves that mirror a parameter (Adam's `mu`/`nu`, ...) are `OptArray`s and
  inherit that parameter's metadata (e.g. sharding names); the others
  (counts, injected hyperparameters) are `OptState`s;
- `model`: the model given at construction. It is an ordinary (shared)
  reference, so `update(grads)` knows which model to write, also inside
  `nnx.jit(train_step)(model, optimizer, ...)`, where it is the same object
  as the `model` argument. Because of it, `nnx.state(optimizer)` contains a
  `model` entry (the layout of Flax < 0.11); `tx` and `wrt` are static.

`update(grads)` / `update(model, grads)` takes the gradients for exactly the
`wrt` leaves of the model (a State from `nnx.grad`, with Variables or raw
arrays, or the matching nested dict), runs `tx.update(grads, opt_state,
params, **kwargs)`, applies the updates in place and increments `step`.
Keyword arguments go to `tx.update` (e.g. `value=`, `grad=`, `value_fn=` for
`optax.scale_by_zoom_linesearch`); States among them are unboxed like grads.

With `optax.inject_hyperparams`, hyperparameters are Variables in the state:
`optimizer.opt_state.hyperparams['learning_rate'][...] = 1e-4`, or the
shortcuts `optimizer.hyperparams['b1']` and `optimizer.learning_rate = 1e-4`.
"""

from __future__ import annotations

import typing as tp
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nnxfn.core import State, state as state_of, to_predicate, update as update_graph
from nnxfn.core.errors import path_str
from nnxfn.facade import spmd
from nnxfn.facade.module import Object, static
from nnxfn.facade.variables import OptArray, OptState, Param, Variable

Path = tuple[tp.Any, ...]
_ARRAYS = (jax.Array, np.ndarray, np.generic, jax.ShapeDtypeStruct)


class Optimizer(Object):
    """Holds an optax transformation, its state and a step counter.

    Args:
      model: the model whose `wrt` Variables are trained.
      tx: an optax `GradientTransformation`.
      wrt: a filter selecting the trained Variables (default `Param`).
    """

    def __init__(self, model: tp.Any, tx: optax.GradientTransformation, *, wrt: tp.Any = Param):
        self.model = model
        self.tx = static(tx)
        self.wrt = static(wrt)
        self.step = OptState(jnp.array(0, dtype=jnp.uint32))
        params = _params(model, wrt)
        raw = _unbox_state(params)
        self.opt_state = _box_opt_state(tx.init(raw), params)

    # -- the update ---------------------------------------------------------------
    def update(self, *args: tp.Any, **kwargs: tp.Any) -> State:
        """`update(grads, **kw)` or `update(model, grads, **kw)`; returns the applied updates."""
        if len(args) == 1:
            model, grads = self.model, args[0]
        elif len(args) == 2:
            model, grads = args
        else:
            raise TypeError(_bad_arity(len(args)))
        params = _params(model, self.wrt)
        raw_params = _unbox_state(params)
        raw_grads = _grads_like(grads, params, self.wrt, "grads")
        extra = {
            k: _grads_like(v, params, self.wrt, k) if isinstance(v, State) else v
            for k, v in kwargs.items()
        }
        raw_opt = _unbox_tree(self.opt_state)
        updates, new_opt = self.tx.update(raw_grads, raw_opt, raw_params, **extra)
        new_params = optax.apply_updates(raw_params, updates)
        update_graph(model, new_params)
        _write_tree(self.opt_state, new_opt)
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
    def learning_rate(self, value: tp.Any) -> None:
        var = self.hyperparams["learning_rate"]
        var.value = jnp.asarray(_unbox(value), dtype=jnp.asarray(var.value).dtype)


    def __setattr__(self, name: str, value: tp.Any) -> None:
        if name == "learning_rate":  # a value write, not a structural change
            type(self).learning_rate.fset(self, value)  # type: ignore[attr-defined]
        else:
            super().__setattr__(name, value)


class ModelAndOptimizer(Optimizer):
    """An `Optimizer` that is also the owner of `.model`: `update(grads)`.

    Same as `Optimizer` (which keeps its model too); provided under Flax's
    name for code written against `nnx.ModelAndOptimizer`.
    """


# -- State helpers ------------------------------------------------------------------
def _params(model: tp.Any, wrt: tp.Any) -> State:
    return state_of(model, wrt)


def _unbox(x: tp.Any) -> tp.Any:
    return x.raw_value if isinstance(x, Variable) else x


def _unbox_state(s: State) -> State:
    return State.from_flat_path([(p, _unbox(v)) for p, v in s.flat_state()])


def _flat_grads(grads: tp.Any, what: str) -> list[tuple[Path, tp.Any]]:
    if isinstance(grads, State):
        return grads.flat_state()
    if isinstance(grads, Mapping):
        return State(grads).flat_state()
    raise TypeError(_bad_grads(what, grads))


def _grads_like(grads: tp.Any, params: State, wrt: tp.Any, what: str) -> State:
    """Raw-array State with exactly the paths of `params`, or a clear error.

    Variable leaves that do not match `wrt` are dropped (gradients taken
    w.r.t. more than the optimizer trains); every other leaf must be a param.
    """
    pred = to_predicate(wrt)
    flat = {}
    for path, leaf in _flat_grads(grads, what):
        if isinstance(leaf, Variable) and not pred(path, leaf):
            continue
        flat[_normalise(path)] = _unbox(leaf)
    want = [p for p, _ in params.flat_state()]
    missing = [p for p in want if p not in flat]
    unexpected = sorted(set(flat) - set(want), key=repr)
    if missing or unexpected:
        raise ValueError(_paths_mismatch(what, missing, unexpected))
    return State.from_flat_path([(p, flat[p]) for p in want])


def _normalise(path: Path) -> Path:
    return tuple(int(k) if isinstance(k, str) and k.isdigit() else k for k in path)


def _is_var(x: tp.Any) -> bool:
    return isinstance(x, Variable)


def _unbox_tree(tree: tp.Any) -> tp.Any:
    return jax.tree.map(_unbox, tree, is_leaf=_is_var)


def _write_tree(boxed: tp.Any, raw: tp.Any) -> None:
    """Write `raw`'s leaves into the Variables of `boxed` (same structure), in place."""
    targets = jax.tree.leaves(boxed, is_leaf=_is_var)
    values, _ = jax.tree.flatten(raw)
    if len(targets) != len(values):
        raise ValueError(_state_changed(len(targets), len(values)))
    for target, value in zip(targets, values):
        if isinstance(target, Variable):
            target.value = value


def _box_opt_state(opt_state: tp.Any, params: State) -> tp.Any:
    """Wrap every array of the optax state in OptArray (mirrors a param) or OptState."""
    meta = {
        p: (getattr(v, "shape", None), v.metadata_items() if isinstance(v, Variable) else (),
            _unbox(v))
        for p, v in params.flat_state()
    }

    def box_mirror(sub: State) -> State:
        pairs = []
        for path, x in sub.flat_state():
            shape, items, param = meta.get(path, (None, (), None))
            if not _is_array(x):
                pairs.append((path, x))
            elif shape is not None and tuple(x.shape) == tuple(shape):
                pairs.append((path, OptArray.from_parts(_placed_like(x, param, items), items)))
            else:
                pairs.append((path, OptArray(x)))
        return State.from_flat_path(pairs)

    def box(x: tp.Any) -> tp.Any:
        if isinstance(x, State):
            return box_mirror(x)
        return OptState(x) if _is_array(x) else x

    return jax.tree.map(box, opt_state, is_leaf=lambda x: isinstance(x, State))


def _is_array(x: tp.Any) -> bool:
    return isinstance(x, _ARRAYS)


def _placed_like(x: tp.Any, param: tp.Any, items: tuple) -> tp.Any:
    """A moment laid out like its parameter: the param's sharding for concrete
    arrays; inside a trace, the param's sharding annotation (if a mesh is set)."""
    if isinstance(x, jax.core.Tracer):
        return spmd.shard_value(x, dict(items)) if spmd.spec_key(dict(items)) else x
    if isinstance(x, jax.Array) and isinstance(param, jax.Array) and not isinstance(
        param, jax.core.Tracer
    ):
        if not x.sharding.is_equivalent_to(param.sharding, x.ndim):
            return jax.device_put(x, param.sharding)
    return x


def _find_hyperparams(opt_state: tp.Any) -> dict[str, Variable] | None:
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


# -- error messages -----------------------------------------------------------------
def _bad_arity(n: int) -> str:
    return (
        f"Optimizer.update takes `(grads)` or `(model, grads)`, got {n} positional "
        "arguments. Pass options to optax as keywords, e.g. "
        "`optimizer.update(model, grads, value=loss)`."
    )


def _bad_grads(what: str, grads: tp.Any) -> str:
    return (
        f"Optimizer.update: {what} must be a State (as returned by `nnx.grad`) or a "
        f"nested dict of arrays, got a {type(grads).__name__}. Compute them with "
        "`grads = nnx.grad(loss_fn)(model)`."
    )


def _paths_mismatch(what: str, missing: list[Path], unexpected: list[Path]) -> str:
    def show(paths: list[Path]) -> str:
        text = ", ".join(path_str(p, "model") for p in paths[:8])
        return text + (f", ... ({len(paths) - 8} more)" if len(paths) > 8 else "")

    lines = [f"Optimizer.update: {what} do not match the trained (`wrt`) Variables of the model."]
    if missing:
        lines.append(f"  missing from {what}: {show(missing)}")
    if unexpected:
        lines.append(f"  in {what} but not trained: {show(unexpected)}")
    lines.append(
        "Take gradients w.r.t. the same Variables the optimizer trains, e.g. "
        "`nnx.grad(loss_fn, argnums=nnx.DiffState(0, wrt))(model)` with the `wrt` "
        "given to `nnx.Optimizer(model, tx, wrt=wrt)`, and pass the model the "
        "optimizer was built for."
    )
    return "\n".join(lines)


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
