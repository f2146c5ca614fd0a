"""Object/Pytree and Module: plain Python objects that join the graph.

Attributes are assigned as usual. Arrays, Variables, Modules and lists,
tuples and dicts of them are *data* (they go to the State); everything else
is *static* (it goes to the GraphDef). `nnx.static(x)` forces static. Every
attribute assignment or deletion bumps the structure epoch that transform
caches check (Variable value writes do not).
"""

from __future__ import annotations

import typing as tp

import jax

from jax._src import core as _jax_core
from jax._src.core import EvalTrace as _EvalTrace

from nnxfn import core
from nnxfn.core import DataLeaf, caches
from nnxfn.facade import context, jaxtree, pytreelib, pytreeview
from nnxfn.facade.display import node_repr
from nnxfn.facade.pytreelib import data as data, static as static
from nnxfn.facade.variables import Perturbation, Variable, variable_type_from_name
from nnxfn.facade.varmodes import base_type as var_type_of

M = tp.TypeVar("M", bound="Module")
_PRIVATE = pytreeview.PRIVATE  # bookkeeping entries of __dict__
_UNSET = object()


class Pytree:
    """Base of every graph object: reference semantics, a JAX pytree.

    `class Foo(nnx.Pytree, pytree=False)` makes a graph object that JAX sees
    as one leaf (nnx functions and transforms still see inside it).
    """

    _nnx_is_pytree: tp.ClassVar[bool] = True
    _nnx_fields: tp.ClassVar[dict[str, bool]] = {}  # class-level nnx.data()/nnx.static()
    _nnx_make_view = staticmethod(pytreeview.object_view)  # how JAX sees an instance

    def __new__(cls, *args: object, **kwargs: object) -> tp.Any:
        obj = object.__new__(cls)
        object.__setattr__(obj, "_nnx_frame", context.current_frame())
        if type(_jax_core.trace_ctx.trace) is not _EvalTrace:
            object.__setattr__(obj, "_nnx_traced", True)
        return obj

    def __init_subclass__(cls, *, pytree: bool | None = None, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("__slots__"):
            raise TypeError(f"Pytree does not support __slots__, found them in {cls.__name__!r}.")
        cls._nnx_is_pytree = True if pytree is None else bool(pytree)  # not inherited (Flax)
        own = pytreelib.class_field_status(cls)
        if own:
            cls._nnx_fields = {**cls._nnx_fields, **own}
        if cls._nnx_is_pytree:
            _register_pytree(cls)

    def __setattr__(self, name: str, value: object) -> None:
        if hasattr(getattr(type(self), name, None), "__set__"):  # a property: not structure
            object.__setattr__(self, name, value)
            return
        d = self.__dict__
        context.check_write(self, d.get("_nnx_frame"), f"attribute {name!r}")
        if isinstance(value, jax.core.Tracer) and "_nnx_traced" not in d:
            _check_tracer_write(self, d, name)
        elif type(value) in (list, tuple, dict):
            _check_no_marks(self, name, value)
        if (
            type(value) is pytreelib.Marked
            or name in self._nnx_fields
            or name in d.get("_nnx_static", ())
            or name in d.get("_nnx_data", ())
            or type(value) in pytreelib.DATA_TYPES
        ):
            value = _mark(self, d, name, value)
        elif (  # a data attribute stays data when given a non-data value (Flax)
            type(value) in _SCALARS and value is not None and name in d and pytreelib.is_data(d[name])
        ):
            object.__setattr__(self, "_nnx_data", d.get("_nnx_data", frozenset()) | {name})
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
        state.pop("_nnx_traced", None)
        state.pop(pytreeview.MEMO, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        object.__setattr__(self, "_nnx_frame", None)

    def __repr__(self) -> str:
        return node_repr(self, _repr_children)

    @property
    def _pytree__nodes(self) -> dict[str, bool]:
        """Flax's view of the attributes: name -> whether it is data."""
        statics = static_names(self)
        return {
            k: k not in statics and pytreelib.has_data(v) != [] or k in self.__dict__.get("_nnx_data", ())
            for k, v in self.__dict__.items()
            if k not in _PRIVATE
        }

    @property
    def _pytree__state(self) -> tp.Any:
        return self.__dict__.get("_nnx_frame")


Object = Pytree  # nnxfn's own graph objects (Rngs, Optimizer, List, ...) are pytrees


class NonPytreeObject(Pytree, pytree=False):
    """`nnx.Object`: a graph object that JAX sees as one leaf (Flax's `Object`)."""

    def __init_subclass__(cls, **kwargs: object) -> None:
        pytree = kwargs.pop("pytree", False)
        if pytree is not False:
            raise ValueError(
                f"nnx.Object is not a pytree, but {cls.__name__} asks for pytree={pytree!r}; "
                "subclass nnx.Pytree (or nnx.Module) instead."
            )
        super().__init_subclass__(pytree=False, **kwargs)


NonPytreeObject.__name__ = NonPytreeObject.__qualname__ = "Object"
_object_new = Pytree.__new__


def _check_tracer_write(obj: Pytree, d: dict, name: str) -> None:
    """A JAX tracer written onto an object made outside every trace (captured
    by a plain `jax.vmap`/`jax.jit` function) would leak: refuse it (Flax does)."""
    if d.get("_nnx_frame") is not None or context.LOCAL.frames:
        return
    if type(_jax_core.trace_ctx.trace) is _EvalTrace:
        return
    raise ValueError(
        f"Cannot set attribute {name!r} of {type(obj).__name__} to a JAX tracer: the object "
        "was created outside the current JAX transform (it is captured by closure). "
        "Pass it as an argument instead, or use an nnx transform."
    )


def _check_no_marks(obj: Pytree, name: str, value: tp.Any) -> None:
    stack = [value]
    while stack:
        v = stack.pop()
        t = type(v)
        if t is pytreelib.Marked:
            raise ValueError(
                f"nnx.data()/nnx.static() found inside the value assigned to {name!r} of "
                f"{type(obj).__name__}: annotations must wrap the whole attribute value, "
                "not items of a sub-pytree."
            )
        if t in (list, tuple):
            stack.extend(v)
        elif t is dict:
            stack.extend(v.values())


def static_names(obj: Pytree) -> frozenset:
    return obj.__dict__.get("_nnx_static", frozenset())


def check_pytree(pytree: object) -> None:
    """Raise if an attribute of `pytree` marked static holds data."""
    if not isinstance(pytree, Pytree):
        raise TypeError(f"Expected a Pytree, got {type(pytree)}.")
    for name in static_names(pytree):
        if name in vars(pytree):
            pytreelib.check_static(pytree, name, vars(pytree)[name], explicit=False)


_NO_NAMES: frozenset = frozenset()


def _mark(obj: Pytree, d: dict, name: str, value: object) -> tp.Any:
    """Record whether `obj.name` is data or static; the value to store."""
    statics = d.get("_nnx_static", _NO_NAMES)
    datas = d.get("_nnx_data", _NO_NAMES)
    if type(value) is pytreelib.Marked:
        is_data, value, explicit = value.is_data, value.value, True
    elif name in statics or name in datas:
        is_data, explicit = name in datas, False
    elif name in obj._nnx_fields:
        is_data, explicit = obj._nnx_fields[name], None
    else:  # a registered data type
        is_data, explicit = True, False
    if not is_data:
        if explicit is None:
            pytreelib.check_static(obj, name, value, explicit=False)
        elif explicit:
            pytreelib.check_static(obj, name, value, explicit=True)
        elif pytreelib.has_data(value):
            raise pytreelib.static_data_error(obj, name, value)
        if name not in statics:
            object.__setattr__(obj, "_nnx_static", statics | {name})
        if name in datas:
            object.__setattr__(obj, "_nnx_data", datas - {name})
    else:
        if name in statics:
            object.__setattr__(obj, "_nnx_static", statics - {name})
        if name not in datas:
            object.__setattr__(obj, "_nnx_data", datas | {name})
    if d.get("_nnx_static", _NO_NAMES) is not statics or d.get("_nnx_data", _NO_NAMES) is not datas:
        context.bump_structure(obj)  # the same value changed status: a new pytree structure
    return value


def needs_box(value: object) -> bool:
    """True if `value`, declared data, is not a leaf or container by itself
    (`nnx.data(1)`, a registered data type that JAX sees as one leaf): the core
    then keeps it whole as a leaf. A registered data type that is a pytree node
    (a `flax.struct.dataclass` holding Params) is walked into, as Flax does."""
    t = type(value)
    if t in _SCALARS:
        return True
    if t not in pytreelib.DATA_TYPES and (pytreelib.is_data(value) or t in (list, tuple, dict)):
        return False
    return jax.tree_util.treedef_is_leaf(jax.tree.structure(value))


_SCALARS = frozenset((int, float, complex, bool, str, type(None)))


def _boxed(keys: tuple, values: tp.Sequence, datas: frozenset) -> tuple:
    return tuple(DataLeaf(v) if k in datas and needs_box(v) else v for k, v in zip(keys, values))


# -- graph-node registration -------------------------------------------------
# (attribute names in __dict__ order, static names) -> (sorted child names, getter):
# the key set rarely changes, so `split` does not sort it on every visit.
_CHILD_KEYS: caches.CacheTable[tuple, tuple[tuple, tp.Callable]] = caches.CacheTable(
    "facade.module.child_keys"
)


def _child_keys(d: dict) -> tuple[tuple, tp.Callable]:
    sig = (tuple(d), d.get("_nnx_static"))
    found = _CHILD_KEYS.get(sig)
    if found is None:
        statics = sig[1] or ()
        keys = tuple(sorted(k for k in d if k not in _PRIVATE and k not in statics))
        getter = pytreeview.values_getter(keys)
        if len(_CHILD_KEYS) > 4096:
            _CHILD_KEYS.clear()
        found = _CHILD_KEYS.put(sig, (keys, getter))
    return found


def _children(obj: Object) -> list[tuple[str, tp.Any]]:
    d = obj.__dict__
    keys, getter = _child_keys(d)
    datas = d.get("_nnx_data")
    if datas:
        return list(zip(keys, _boxed(keys, getter(d), datas)))
    return list(zip(keys, getter(d)))


def _parts(obj: Object) -> tuple[tp.Hashable, tuple, tp.Any]:
    """(static, child keys, child values) in one call, for `split`."""
    d = obj.__dict__
    statics = d.get("_nnx_static")
    found = _CHILD_KEYS.get((tuple(d), statics))
    keys, getter = _child_keys(d) if found is None else found
    values = getter(d)
    datas = d.get("_nnx_data")
    if datas:
        values = _boxed(keys, values, datas)
    if statics:
        return tuple(sorted((k, d[k]) for k in statics)), keys, values
    return None, keys, values


def _repr_children(obj: object) -> list[tuple[tp.Any, tp.Any]]:
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
    """A new `cls` without `__init__`; `statics` is what `_static` gave."""
    pytree_cls = tp.cast("type[Pytree]", cls)  # registered for Pytree: only its subclasses come here
    obj: Pytree
    if pytree_cls.__new__ is _object_new:
        obj = object.__new__(pytree_cls)
        object.__setattr__(obj, "_nnx_frame", context.current_frame())
        if type(_jax_core.trace_ctx.trace) is not _EvalTrace:
            object.__setattr__(obj, "_nnx_traced", True)
    else:
        obj = pytree_cls.__new__(pytree_cls)
    if statics:
        pairs = tp.cast("tuple[tuple[str, object], ...]", statics)
        for k, v in pairs:
            object.__setattr__(obj, k, v)
        object.__setattr__(obj, "_nnx_static", frozenset(k for k, _ in pairs))
    return obj


def _set_child(obj: Object, key: str, value: object) -> None:
    # Rebinding an existing attribute to another object (`nnx.update` writing a
    # raw array, or a rebuilt Equinox module) is structural for transform caches.
    if obj.__dict__.get(key, value) is not value:
        context.bump_structure(obj)
    object.__setattr__(obj, key, value)


# (type, keys) -> may `_fill` write __dict__ directly
_PLAIN_FILL: caches.CacheTable[tuple, bool] = caches.CacheTable("facade.module.plain_fill")


def _plain_fill(cls: type, keys: tuple) -> bool:
    """True if `__dict__` may take these children directly: no property/slot
    takes their names and the class keeps the default `__new__`."""
    plain = _PLAIN_FILL.get((cls, keys))
    if plain is None:
        plain = cls.__new__ is _object_new and not any(
            hasattr(getattr(cls, k, None), "__set__") for k in keys
        )
        if len(_PLAIN_FILL) > 4096:
            _PLAIN_FILL.clear()
        _PLAIN_FILL.put((cls, keys), plain)
    return plain


def _fill(obj: Object, keys: tuple, values: tp.Sequence) -> None:
    """All children of a node `_create_empty` just made (as `_set_child` per key)."""
    if _plain_fill(type(obj), keys):
        obj.__dict__.update(zip(keys, values))
    else:
        for k, v in zip(keys, values):
            _set_child(obj, k, v)


# (type, keys) -> `make` of `_plain_maker` (see `_builder`)
_MAKERS: caches.CacheTable[tuple, tp.Callable] = caches.CacheTable("facade.module.makers")


def _builder(cls: type, statics: tp.Hashable, keys: tuple) -> tp.Callable[[tp.Iterable], list]:
    """`_create_empty` + `_fill` for many nodes of one shape, given their
    children's values (how `merge` makes most layers)."""
    if statics or not _plain_fill(cls, keys) or not keys or not all(type(k) is str for k in keys):

        def make_general(groups: tp.Iterable[tp.Sequence]) -> list:
            out = []
            for values in groups:
                obj = _create_empty(cls, statics)
                _fill(obj, keys, values)
                out.append(obj)
            return out

        return make_general
    make = _MAKERS.get((cls, keys))
    if make is None:
        if len(_MAKERS) > 4096:
            _MAKERS.clear()
        make = _MAKERS.put((cls, keys), _plain_maker(cls, keys))
    return make


def _plain_maker(cls: type[Pytree], keys: tuple) -> tp.Callable[[tp.Iterable], list]:
    """`make(groups)`: a new `cls` per group of child values, its `__dict__`
    filled directly. The frame and trace are looked up once per call, not
    once per object (`merge` makes one object per layer)."""
    put = pytreeview.children_setter(keys)
    local = context.LOCAL
    trace_ctx = _jax_core.trace_ctx
    new = object.__new__

    def make(groups: tp.Iterable[tp.Sequence]) -> list:
        frames = local.frames
        frame = frames[-1] if frames else None
        traced = type(trace_ctx.trace) is not _EvalTrace
        out: list[Pytree] = []
        append = out.append
        for values in groups:
            obj: Pytree = new(cls)
            d = obj.__dict__
            if frame is not None:
                d["_nnx_frame"] = frame
            if traced:
                d["_nnx_traced"] = True
            put(d, values)
            append(obj)
        return out

    return make


def _del_child(obj: Object, key: str) -> None:
    context.bump_structure(obj)
    object.__delattr__(obj, key)
    statics = obj.__dict__.get("_nnx_static")
    if statics and key in statics:  # a deleted attribute is no longer static
        object.__setattr__(obj, "_nnx_static", statics - {key})


core.register_node_type(
    core.NodeImpl(
        Object,
        _children,
        _create_empty,
        _set_child,
        _del_child,
        _static,
        parts=_parts,
        fill=_fill,
        builder=_builder,
    )
)


def _register_pytree(cls: type) -> None:
    jaxtree.register(cls)


pytreeview.DEFAULT_NEW.append(_object_new)
_register_pytree(Object)


# -- Module ---------------------------------------------------------------------
def tuple_reduce(xs: tuple, x: object) -> tuple:
    """`sow`'s default `reduce_fn`: append `x` to the tuple `xs`."""
    return (*xs, x)


def tuple_init() -> tuple:
    """`sow`'s default `init_fn`: an empty tuple."""
    return ()


def first_from(*args: object, error_msg: str) -> tp.Any:
    """The first argument that is not None; a ValueError with `error_msg` if all are.

    >>> first_from(None, 0.5, 0.1, error_msg="no rate")
    0.5
    """
    for arg in args:
        if arg is not None:
            return arg
    raise ValueError(error_msg)


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
        value: object,
        reduce_fn: tp.Callable[[tp.Any, tp.Any], tp.Any] = tuple_reduce,
        init_fn: tp.Callable[[], tp.Any] = tuple_init,
    ) -> bool:
        """Record `value` under `name` as a `variable_type` (a tuple of values by default).

        Inside `nnx.capture` it goes to the capture buffers (and is dropped if
        `variable_type` is not captured: returns False); outside, to a
        Variable attribute `name`.
        """
        if isinstance(variable_type, str):
            variable_type = variable_type_from_name(variable_type, allow_register=True)
        buffers = self.__dict__.get("__captures__")
        if buffers is not None:
            for var in buffers:
                if type(var) is variable_type:
                    var[name] = reduce_fn(var[name] if name in var else init_fn(), value)
                    return True
            return False
        current = self.__dict__.get(name, _UNSET)
        if current is _UNSET:
            setattr(self, name, variable_type(reduce_fn(init_fn(), value)))
        elif not isinstance(current, Variable):
            raise ValueError(
                f"sow: expected '{name}' to be a Variable, got {type(current).__name__} "
                f"(an attribute of {type(self).__name__} has that name); sow under another name."
            )
        elif var_type_of(type(current)) is not variable_type:
            raise ValueError(
                f"sow: expected '{name}' to be of type '{variable_type.__name__}', got "
                f"'{type(current).__name__}'; sow under another name or with that type."
            )
        else:
            current.set_value(reduce_fn(current.get_value(), value))
        return True

    def perturb(self, name: str, value: object, variable_type: type[Variable] | str = Perturbation) -> tp.Any:
        """Add a zero-valued `variable_type` to `value`, so `nnx.grad` can target it."""
        import jax.numpy as jnp

        if isinstance(variable_type, str):
            variable_type = variable_type_from_name(variable_type, allow_register=True)
        buffers = self.__dict__.get("__captures__")
        if buffers is not None:
            for var in buffers:
                if type(var) is variable_type:
                    if name not in var:
                        var[name] = jax.tree.map(jnp.zeros_like, value)
                    return var[name] + value
            return value
        current = self.__dict__.get(name, _UNSET)
        if current is _UNSET:
            setattr(self, name, variable_type(jax.tree.map(jnp.zeros_like, value)))
            current = self.__dict__[name]
        elif not isinstance(current, variable_type):
            raise ValueError(
                f"perturb: expected '{name}' to be of type '{variable_type.__name__}', "
                f"got '{type(current).__name__}'."
            )
        return current.get_value() + value

    def iter_modules(self) -> tp.Iterator[tuple[tuple, Module]]:
        return iter_modules(self)

    def iter_children(self) -> tp.Iterator[tuple[str, Module]]:
        for key, value in _children(self):
            if isinstance(value, Module):
                yield key, value

    def set_attributes(
        self,
        *filters: object,
        raise_if_not_found: bool = True,
        graph: bool | None = None,
        **attributes: object,
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
            raise ValueError(
                "Could not find at least one instance of the following attributes: "
                f"{sorted(remaining)} (in {type(self).__name__} or its sub-modules). "
                "Check the names, or pass raise_if_not_found=False."
            )

    def train(self, **attributes: bool | None) -> None:
        """Training mode: `deterministic=False`, `use_running_average=False` everywhere."""
        self.set_attributes(
            deterministic=False, use_running_average=False, raise_if_not_found=False, **attributes
        )

    def eval(self, **attributes: bool | None) -> None:
        """Evaluation mode: `deterministic=True`, `use_running_average=True` everywhere."""
        self.set_attributes(
            deterministic=True, use_running_average=True, raise_if_not_found=False, **attributes
        )


def iter_modules(
    node: object, /, *, graph: bool | None = None, graph_updates: bool | None = None
) -> tp.Iterator[tuple[tuple, Module]]:
    """(path, module) for every Module in the graph, children first."""
    for path, value in core.iter_graph(node):
        if isinstance(value, Module):
            yield path, value
