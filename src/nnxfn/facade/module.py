"""Object/Pytree and Module: plain Python objects that join the graph.

Attributes are assigned as usual. Arrays, Variables, Modules and lists,
tuples and dicts of them are *data* (they go to the State); everything else
is *static* (it goes to the GraphDef). `nnx.static(x)` forces static. Every
attribute assignment or deletion bumps the structure epoch that transform
caches check (Variable value writes do not).
"""

from __future__ import annotations

import operator
import typing as tp

import jax

from nnxfn import core
from nnxfn.facade import context
from nnxfn.facade.display import node_repr
from nnxfn.facade.variables import Intermediate, Perturbation, Variable

_PRIVATE = ("_nnx_frame", "_nnx_static", "_nnx_pytree", "_nnx_version")
_UNSET = object()


class static:  # noqa: N801 - mirrors Flax's lower-case marker
    """`self.x = nnx.static(value)`: keep `value` in the GraphDef (it must be hashable)."""

    __slots__ = ("value",)

    def __init__(self, value: tp.Any):
        self.value = value


class data:  # noqa: N801
    """`self.x = nnx.data(value)`: keep `value` as data (undoes an earlier `nnx.static`)."""

    __slots__ = ("value",)

    def __init__(self, value: tp.Any):
        self.value = value


class Object:
    """Base of every graph object: reference semantics, a JAX pytree."""

    def __new__(cls, *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        obj = object.__new__(cls)
        object.__setattr__(obj, "_nnx_frame", context.current_frame())
        return obj

    def __init_subclass__(cls, **kwargs: tp.Any) -> None:
        super().__init_subclass__(**kwargs)
        _register_pytree(cls)

    def __setattr__(self, name: str, value: tp.Any) -> None:
        if hasattr(getattr(type(self), name, None), "__set__"):  # a property: not structure
            object.__setattr__(self, name, value)
            return
        d = self.__dict__
        context.check_write(self, d.get("_nnx_frame"), f"attribute {name!r}")
        statics = d.get("_nnx_static", frozenset())
        if isinstance(value, static):
            value = value.value
            _check_hashable(self, name, value)
            object.__setattr__(self, "_nnx_static", statics | {name})
        elif isinstance(value, data):
            value = value.value
            object.__setattr__(self, "_nnx_static", statics - {name})
        elif name in statics:
            _check_hashable(self, name, value, rebound=True)
        if d.get(name, _UNSET) is not value:  # `self.v += 1` on a Variable rebinds the same object
            context.bump_structure(self)  # also for arrays: transform caches hold raw-array leaves
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        context.check_write(self, self.__dict__.get("_nnx_frame"), f"attribute {name!r}")
        _del_child(self, name)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_nnx_frame", None)
        state.pop("_nnx_pytree", None)
        state.pop("_nnx_version", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        object.__setattr__(self, "_nnx_frame", None)

    def __repr__(self) -> str:
        return node_repr(self, _repr_children)


Pytree = Object
_object_new = Object.__new__


def _check_hashable(obj: tp.Any, name: str, value: tp.Any, rebound: bool = False) -> None:
    try:
        hash(value)
    except TypeError:
        if rebound:
            raise TypeError(
                f"{type(obj).__name__}.{name} was marked `nnx.static`, so it must stay "
                f"hashable, but it is being set to a {type(value).__name__}. To make it "
                f"data again, write `self.{name} = nnx.data(value)`."
            ) from None
        raise TypeError(
            f"{type(obj).__name__}.{name} = nnx.static(...) needs a hashable value, "
            f"got a {type(value).__name__}. Use a tuple instead of a list, or a "
            "frozen dataclass."
        ) from None


# -- graph-node registration -------------------------------------------------
# (attribute names in __dict__ order, static names) -> (sorted child names, getter):
# the key set rarely changes, so `split` does not sort it on every visit.
_CHILD_KEYS: dict[tuple, tuple[tuple, tp.Callable]] = {}


def _child_keys(d: dict) -> tuple[tuple, tp.Callable]:
    sig = (tuple(d), d.get("_nnx_static"))
    found = _CHILD_KEYS.get(sig)
    if found is None:
        statics = sig[1] or ()
        keys = tuple(sorted(k for k in d if k not in _PRIVATE and k not in statics))
        if len(keys) > 1:
            getter = operator.itemgetter(*keys)
        elif keys:
            getter = lambda d, k=keys[0]: (d[k],)  # noqa: E731
        else:
            getter = lambda d: ()  # noqa: E731
        if len(_CHILD_KEYS) > 4096:
            _CHILD_KEYS.clear()
        found = _CHILD_KEYS[sig] = (keys, getter)
    return found


def _children(obj: Object) -> list[tuple[str, tp.Any]]:
    d = obj.__dict__
    keys, getter = _child_keys(d)
    return list(zip(keys, getter(d)))


def _parts(obj: Object) -> tuple[tp.Hashable, tuple, tp.Any]:
    """(static, child keys, child values) in one call, for `split`."""
    d = obj.__dict__
    statics = d.get("_nnx_static")
    found = _CHILD_KEYS.get((tuple(d), statics))
    keys, getter = _child_keys(d) if found is None else found
    if statics:
        return tuple(sorted((k, d[k]) for k in statics)), keys, getter(d)
    return None, keys, getter(d)


def _repr_children(obj: tp.Any) -> list[tuple[tp.Any, tp.Any]]:
    impl = core.registry.lookup(type(obj))
    if impl is not None and impl.children is _children:
        return sorted((k, v) for k, v in obj.__dict__.items() if k not in _PRIVATE)
    return core.graph.children_of(obj)


def _static(obj: Object) -> tp.Hashable:
    statics = obj.__dict__.get("_nnx_static")
    if not statics:
        return None
    return tuple(sorted((k, obj.__dict__[k]) for k in statics))


def _create_empty(cls: type, statics: tp.Hashable) -> Object:
    if cls.__new__ is _object_new:
        obj = object.__new__(cls)
        object.__setattr__(obj, "_nnx_frame", context.current_frame())
    else:
        obj = cls.__new__(cls)
    if statics:
        for k, v in statics:
            object.__setattr__(obj, k, v)
        object.__setattr__(obj, "_nnx_static", frozenset(k for k, _ in statics))
    return obj


def _set_child(obj: Object, key: str, value: tp.Any) -> None:
    # Rebinding an existing attribute to another object (`nnx.update` writing a
    # raw array, or a rebuilt Equinox module) is structural for transform caches.
    if obj.__dict__.get(key, value) is not value:
        context.bump_structure(obj)
    object.__setattr__(obj, key, value)


_PLAIN_FILL: dict[tuple, bool] = {}  # (type, keys) -> may `_fill` write __dict__ directly


def _fill(obj: Object, keys: tuple, values: tp.Sequence) -> None:
    """All children of a node `_create_empty` just made (as `_set_child` per key)."""
    cls = type(obj)
    plain = _PLAIN_FILL.get((cls, keys))
    if plain is None:  # no property/slot takes these names; no custom __new__ ran
        plain = cls.__new__ is _object_new and not any(
            hasattr(getattr(cls, k, None), "__set__") for k in keys
        )
        if len(_PLAIN_FILL) > 4096:
            _PLAIN_FILL.clear()
        _PLAIN_FILL[(cls, keys)] = plain
    if plain:
        obj.__dict__.update(zip(keys, values))
    else:
        for k, v in zip(keys, values):
            _set_child(obj, k, v)


def _del_child(obj: Object, key: str) -> None:
    context.bump_structure(obj)
    object.__delattr__(obj, key)
    statics = obj.__dict__.get("_nnx_static")
    if statics and key in statics:  # a deleted attribute is no longer static
        object.__setattr__(obj, "_nnx_static", statics - {key})


core.register_node_type(
    core.NodeImpl(
        Object, _children, _create_empty, _set_child, _del_child, _static, parts=_parts, fill=_fill
    )
)


def _pytree_flatten(obj: Object):
    """JAX sees the State leaves (Variables, raw arrays), each once even if
    shared; foreign pytrees (Equinox modules) are children whole, so
    `is_leaf=lambda x: isinstance(x, eqx.nn.Linear)` and `eqx.tree_at` see them."""
    memo = obj.__dict__.get("_nnx_pytree")
    if memo is not None and memo[3] == context.structure_epoch():
        # Made by `_pytree_unflatten` and structurally unchanged since: keep its
        # leaf slots even if they now hold None/bools (e.g. `eqx.partition`).
        pairs = core.graph.flatten_like(memo[0], obj, memo[2])
        if pairs is not None:
            return [leaf for _, leaf in pairs], memo[:3]
    whole: dict = {}
    graphdef, pairs = core.flatten(obj, copy=False, whole_pytrees=whole)
    if whole:
        pairs = tp.cast(list, core.graph.flatten_like(graphdef, obj, whole))
    return [leaf for _, leaf in pairs], (graphdef, tuple(p for p, _ in pairs), frozenset(whole))


def _pytree_flatten_with_keys(obj: Object):
    leaves, aux = _pytree_flatten(obj)
    keys = [jax.tree_util.GetAttrKey(_path_name(p)) for p in aux[1]]
    return list(zip(keys, leaves)), aux


def _path_name(path: tuple) -> str:
    return ".".join(str(k) for k in path)


def _is_tracer(x: tp.Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def _pytree_unflatten(aux: tuple, leaves: tp.Iterable) -> Object:
    graphdef, paths, whole = aux
    leaves = list(leaves)
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
            raise core.fastpath.LeafMismatch
        obj = core.fastpath.unflatten_leaves(graphdef, leaves, copy=False)
    except core.fastpath.LeafMismatch:
        obj = core.unflatten(graphdef, dict(zip(paths, leaves)), copy=False)
    if traced:  # rebuilt inside a non-nnxfn transform: attribute writes would be lost
        for path, node in core.iter_graph(obj):
            if isinstance(node, Object) and node.__dict__.get("_nnx_frame") is None:
                object.__setattr__(node, "_nnx_frame", context.FOREIGN)
                context.remember_foreign_path(node, path)
    if isinstance(obj, Object):
        object.__setattr__(obj, "_nnx_pytree", (*aux, context.structure_epoch()))
    return obj


def _register_pytree(cls: type) -> None:
    jax.tree_util.register_pytree_with_keys(
        cls, _pytree_flatten_with_keys, _pytree_unflatten, _pytree_flatten
    )


_register_pytree(Object)


# -- Module ---------------------------------------------------------------------
class Module(Object):
    """Base class for layers and models.

    >>> class Scale(Module):
    ...     def __init__(self):
    ...         self.w = Param(jnp.ones(2))
    ...     def __call__(self, x):
    ...         return x * self.w
    """

    def sow(
        self,
        variable_type: type[Variable] | str,
        name: str,
        value: tp.Any,
        reduce_fn: tp.Callable[[tp.Any, tp.Any], tp.Any] = lambda xs, x: (*xs, x),
        init_fn: tp.Callable[[], tp.Any] = tuple,
    ) -> None:
        """Record `value` in a `variable_type` Variable named `name` (a tuple by default)."""
        if isinstance(variable_type, str):
            variable_type = Intermediate
        current = self.__dict__.get(name)
        if isinstance(current, Variable):
            current.value = reduce_fn(current.raw_value, value)
        else:
            setattr(self, name, variable_type(reduce_fn(init_fn(), value)))

    def perturb(
        self, name: str, value: tp.Any, variable_type: type[Variable] = Perturbation
    ) -> tp.Any:
        """Add a zero-valued `variable_type` to `value`, so `nnx.grad` can target it."""
        import jax.numpy as jnp

        if name not in self.__dict__:
            setattr(self, name, variable_type(jnp.zeros_like(value)))
        return value + self.__dict__[name].raw_value

    def iter_modules(self) -> tp.Iterator[tuple[tuple, Module]]:
        return iter_modules(self)

    def iter_children(self) -> tp.Iterator[tuple[str, Module]]:
        for key, value in _children(self):
            if isinstance(value, Module):
                yield key, value

    def set_attributes(
        self, *filters: tp.Any, raise_if_not_found: bool = True, **attributes: tp.Any
    ) -> None:
        """Set `attributes` on every sub-module (matching `filters`) that has them."""
        preds = [core.to_predicate(f) for f in filters]
        remaining = set(attributes)
        for path, module in iter_modules(self):
            if preds and not any(p(path, module) for p in preds):
                continue
            for name, value in attributes.items():
                if hasattr(module, name):
                    setattr(module, name, value)
                    remaining.discard(name)
        if remaining and raise_if_not_found:
            raise AttributeError(
                f"set_attributes: no sub-module of {type(self).__name__} has "
                f"{sorted(remaining)}. Check the names, or pass raise_if_not_found=False."
            )

    def train(self, **attributes: tp.Any) -> None:
        """Training mode: `deterministic=False`, `use_running_average=False` everywhere."""
        self.set_attributes(
            deterministic=False, use_running_average=False, raise_if_not_found=False, **attributes
        )

    def eval(self, **attributes: tp.Any) -> None:
        """Evaluation mode: `deterministic=True`, `use_running_average=True` everywhere."""
        self.set_attributes(
            deterministic=True, use_running_average=True, raise_if_not_found=False, **attributes
        )


def iter_modules(node: tp.Any) -> tp.Iterator[tuple[tuple, Module]]:
    """(path, module) for every Module in the graph, children first."""
    for path, value in core.iter_graph(node):
        if isinstance(value, Module):
            yield path, value


def view(node: tp.Any, /, *, only: tp.Any = ..., raise_if_not_found: bool = True,
         **attributes: tp.Any) -> tp.Any:
    """A copy of the object graph that shares every Variable with `node` but
    has `attributes` set on the sub-modules (matching `only`) that have them.

    `nnx.view(model, deterministic=True)` is an evaluation view: calling it
    updates the same parameters and statistics, `model` itself is unchanged.
    """
    graphdef, pairs = core.flatten(node, copy=False)
    copy = core.unflatten(graphdef, dict(pairs), copy=False)
    if attributes:
        copy.set_attributes(only, raise_if_not_found=raise_if_not_found, **attributes)
    return copy


def capture(fn: tp.Any, *var_types: type, init: tp.Any = None) -> tp.Callable:
    """Wrap `fn` so it returns `(result, *states)`: the values that `sow`/`perturb`
    recorded during the call, one State per Variable type in `var_types`.

    `fn` may be a Module (its `__call__`), a bound method, or a function whose
    first argument is the module. The recorded Variables are removed from the
    module afterwards. `init` (a State, e.g. of `Perturbation`s) is written into
    the module before the call. `nnx.capture(nnx.Intermediate)(fn)` also works.
    """
    if isinstance(fn, type) and issubclass(fn, Variable):
        return lambda actual: capture(actual, fn, *var_types, init=init)
    owner = fn if isinstance(fn, Module) else getattr(fn, "__self__", None)

    def wrapper(*args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        module = owner if isinstance(owner, Module) else args[0]
        if init is not None:
            core.update(module, init)
        result = fn(*args, **kwargs)
        if not var_types:
            return result
        states = core.pop(module, *(_exact_first(t, var_types) for t in var_types))
        return (result, *(states if len(var_types) > 1 else (states,)))

    return wrapper


def _exact_first(var_type: type, all_types: tuple) -> tp.Callable:
    """A filter for `var_type` that leaves instances of other listed subtypes to them."""

    def pred(path: tuple, value: tp.Any) -> bool:
        kind = type(value)
        return kind is var_type or (isinstance(value, var_type) and kind not in all_types)

    return pred
