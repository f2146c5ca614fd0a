"""Variables: mutable boxes holding one value plus metadata.

`Param`, `BatchStat`, `Cache`, `Intermediate`, `Perturbation` and user
subclasses differ only by type, which filters select on. Reads:
`v[...]`, `v.value`, `v.get_value()`, arithmetic, `x @ v`. Writes:
`v[...] = x`, `v.value = x`, `v.set_value(x)`.
"""

from __future__ import annotations

import functools
import math
import operator
import types
import typing as tp
import warnings

import jax
from jax._src import core as _jax_core
from jax._src.core import EvalTrace as _EvalTrace
import jax.numpy as jnp

from nnxfn.core import VariableLike
from nnxfn.facade import context, jaxtree, spmd
from nnxfn.facade import varmodes
from nnxfn.facade.valuerepr import variable_repr

A = tp.TypeVar("A")
_MISSING: tp.Any = varmodes.MISSING
REQUIRED_METADATA = ("hijax", "ref", "eager_sharding")
Metadata = tuple[tuple[str, object], ...]  # a Variable's metadata: sorted (name, hashable value) pairs


def hashable_metadata(value: object) -> object:
    """Metadata must be hashable (it lives in the GraphDef): lists -> tuples."""
    if isinstance(value, list):
        return tuple(hashable_metadata(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, hashable_metadata(v)) for k, v in value.items()))
    return value


class Variable(VariableLike, tp.Generic[A]):
    """A mutable box for one value (usually an array) with metadata.

    >>> v = Variable(jnp.ones(3), out_sharding=("data",))
    >>> v[...] = v * 2
    >>> float(v.sum()), v.out_sharding
    (6.0, ('data',))
    """

    # `_trace`: the JAX trace the Variable was made in (see `_check_trace`).
    # `_fresh`: built by a JAX unflatten, not yet claimed by a parent (see `jaxtree`).
    __slots__ = ("raw_value", "_metadata", "_frame", "_trace", "_fresh", "__weakref__")
    required_metadata = frozenset(REQUIRED_METADATA)
    # True while `get_value`/`set_value` are not overridden: `v[...]`, arithmetic
    # and `.value` then read and write `raw_value` directly (the fast path).
    _plain_access: tp.ClassVar[bool] = True
    hijax: tp.ClassVar[bool] = False  # see `varmodes`: `hijax=True`/`ref=True` subclasses
    _mode_ref: tp.ClassVar[bool] = False  # set on the `ref=True` subclasses
    # Writes from another JAX trace than the one the Variable was made in raise
    # (`ref`/`hijax` Variables are made to be written that way).
    _trace_checked: tp.ClassVar[bool] = True

    def __new__(
        cls, *args: object, hijax: bool | None = None, ref: bool | None = None, **kwargs: object
    ) -> tp.Any:
        if cls.__dict__.get("_mode_base") is not None:  # `type(v)(x)` keeps v's mode
            hijax = cls.hijax if hijax is None else hijax
            ref = cls._mode_ref if ref is None else ref
        defaults = varmodes.current_defaults()
        hijax = defaults.hijax if hijax is None else hijax
        ref = defaults.ref if ref is None else ref
        if hijax or ref or cls.__dict__.get("_mode_base") is not None:
            cls = varmodes.mode_type(cls, hijax=bool(hijax), ref=bool(ref))
        return object.__new__(cls)

    def __init__(
        self,
        value: A,
        *,
        hijax: bool | None = None,
        ref: bool | None = None,
        eager_sharding: bool | None = None,
        **metadata: object,
    ):
        if isinstance(value, Variable):
            metadata = {**value.get_metadata(exclude_required=True), **metadata}
            value = value.get_raw_value() if not value.ref else value.get_value()
        value, metadata = spmd.unwrap(value, metadata)  # nnx.with_partitioning/with_metadata
        for old in ("sharding", "sharding_names"):  # Flax's deprecated names for `out_sharding`
            if old in metadata:
                warnings.warn(f"'{old}' is deprecated, use 'out_sharding' instead.", DeprecationWarning, 2)
                metadata["out_sharding"] = metadata.pop(old)
        for key in ("hijax", "ref"):
            metadata.pop(key, None)  # decided by the type (see `__new__`)
        if eager_sharding is not None:
            metadata["eager_sharding"] = eager_sharding
        sharded = dict(metadata) if spmd.spec_key(metadata) is not None else None
        if metadata.get("eager_sharding", True) is True:
            metadata.pop("eager_sharding", None)  # the default is not stored
        object.__setattr__(
            self, "_metadata", tuple(sorted((k, hashable_metadata(v)) for k, v in metadata.items()))
        )
        object.__setattr__(self, "_frame", context.current_frame())
        object.__setattr__(self, "_trace", _TRACE_CTX.trace)
        object.__setattr__(self, "raw_value", value)  # what `create_value` overrides may read
        value = self.create_value(value)
        if sharded is not None:  # eager sharding under `jax.set_mesh`
            # an explicit `eager_sharding=True` wins over `use_eager_sharding(False)`
            value = spmd.shard_value(value, sharded, where=f"this {type(self).__name__}")
        object.__setattr__(self, "raw_value", self._store(value))

    def create_value(self, value: A) -> A:
        """The value to store, given the one passed to the constructor (called once by
        `__init__`, with the metadata already set). Subclasses override it to convert or
        check initial values; copies, `split`/`merge` and transforms do not call it."""
        return value

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "_plain_access" not in cls.__dict__:
            cls._plain_access = cls.get_value is Variable.get_value and cls.set_value is Variable.set_value
        _register_pytree(cls)

    @staticmethod
    def _store(value: object) -> tp.Any:
        """How a value is kept in `raw_value` (`ref`/`hijax` types keep jax.Refs)."""
        return value

    # -- the core's contract -------------------------------------------------
    def metadata_items(self) -> Metadata:
        return self._metadata

    @classmethod
    def from_parts(cls, value: object, metadata: Metadata) -> Variable:
        var = _new(cls)  # slot setters: `split`/`merge` make one per leaf
        _set_raw_value(var, value)
        _set_metadata(var, metadata)
        frames = _LOCAL.frames  # context.current_frame(), inlined: one per leaf
        _set_frame(var, frames[-1] if frames else None)
        _set_trace(var, _TRACE_CTX.trace)
        return var

    def adopt(self) -> None:
        # Rebuilt by a foreign transform (JAX unflattening a State) and now put in a
        # graph by `merge`: its writes reach whoever returns that graph's state.
        if self._frame is context.FOREIGN:
            frames = _LOCAL.frames
            _set_frame(self, frames[-1] if frames else None)

    def set_raw(self, value: object) -> None:
        context.check_write(self, self._frame, "the value")
        if self._trace_checked:
            _check_trace(self)
        object.__setattr__(self, "raw_value", value)

    def set_metadata_items(self, metadata: Metadata) -> None:
        context.check_write(self, self._frame, "the metadata")
        if self._trace_checked:
            _check_trace(self)
        object.__setattr__(self, "_metadata", metadata)
        context.metadata_changed()

    # -- value access ------------------------------------------------------------
    @property
    def value(self) -> A:
        return self.raw_value if self._plain_access else self.get_value()

    @value.setter
    def value(self, value: A) -> None:
        if isinstance(value, Variable):
            value = value.get_value()
        if self._plain_access:
            self.set_raw(value)
        else:
            self.set_value(value)

    def get_raw_value(self) -> A:
        """The stored value, without `get_value` overrides (a jax.Ref if `ref=True`)."""
        return self.raw_value

    def set_raw_value(self, value: A) -> None:
        self.set_raw(value)

    def get_value(self, *, index: object = _MISSING) -> A:
        """The value (`v[...]`); `index` reads one item (`v[i]`)."""
        raw = self.raw_value
        if index is _MISSING or index is Ellipsis:
            return raw
        return raw[index]

    def set_value(self, value: A, *, index: object = _MISSING) -> None:
        """Write the value (`v[...] = x`); `index` writes one item (`v[i] = x`)."""
        if isinstance(value, Variable):
            value = value.get_value()
        if index is _MISSING:
            self.set_raw(value)
            return
        self.set_raw(_set_item(self.raw_value, index, value))

    def __getitem__(self, key: object) -> tp.Any:
        if not self._plain_access:
            return self.get_value(index=key)
        if key is Ellipsis:
            return self.raw_value
        return self.raw_value[key]

    def __setitem__(self, key: object, value: tp.Any) -> None:
        if not self._plain_access:
            self.set_value(value, index=key)
            return
        if isinstance(value, Variable):
            value = value.get_value()
        self.set_raw(_set_item(self.raw_value, key, value))

    def __delitem__(self, key: object) -> None:
        value: object = self.get_value()
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k != key}
        elif isinstance(value, list):
            value = [v for i, v in enumerate(value) if i != key]
        else:
            raise TypeError(f"cannot delete item {key!r} of a {type(value).__name__} value")
        self.set_value(tp.cast("A", value))

    def __contains__(self, item: object) -> bool:
        return item in tp.cast("tp.Container[object]", self.get_value())

    def __call__(self, *args: object, **kwargs: object) -> tp.Any:
        return tp.cast("tp.Callable[..., tp.Any]", self.get_value())(*args, **kwargs)

    # -- metadata ------------------------------------------------------------------
    @property
    def ref(self) -> bool:
        """True if the value is kept in a `jax.Ref` (`Variable(x, ref=True)`)."""
        return False

    @property
    def eager_sharding(self) -> bool:
        return dict(self._metadata).get("eager_sharding", True)

    @property
    def var_type(self) -> type:
        return varmodes.base_type(type(self))

    def get_metadata(
        self, name: str | None = None, default: object = None, *, exclude_required: bool | None = None
    ) -> tp.Any:
        """All metadata as a dict (with `hijax`, `ref`, `eager_sharding`), or one entry."""
        meta = dict(self._metadata)
        if not exclude_required:
            meta.update(hijax=self.hijax, ref=self.ref, eager_sharding=meta.get("eager_sharding", True))
        return meta if name is None else meta.get(name, default)

    def has_metadata(self, name: str) -> bool:
        return name in REQUIRED_METADATA or any(k == name for k, _ in self._metadata)

    def del_metadata(self, name: str) -> None:
        if name in ("hijax", "ref"):
            raise ValueError(f"Cannot delete `{name}` metadata")
        meta = dict(self._metadata)
        del meta[name]
        self.set_metadata_items(tuple(sorted(meta.items())))

    def set_metadata(self, *args: tp.Any, **kwargs: object) -> None:
        """`v.set_metadata(name, value)`, `v.set_metadata(**items)` or
        `v.set_metadata(dict)` (which replaces all metadata)."""
        if args and kwargs:
            raise TypeError("set_metadata takes a dict, a (name, value) pair or keywords, not both")
        meta = dict(self._metadata)
        if len(args) == 2:
            updates = {args[0]: args[1]}
        elif len(args) == 1:
            updates = dict(args[0])
            meta = {}
        elif kwargs:
            updates = kwargs
        else:
            raise TypeError("set_metadata needs a dict, a (name, value) pair or keywords")
        for key in ("hijax", "ref"):
            if key in updates and updates.pop(key) != getattr(self, key):
                raise ValueError(
                    f"Cannot change `{key}` metadata with set_metadata; make a new "
                    f"Variable instead: `v.copy({key}=...)` or `nnx.with_vars(node, {key}=...)`."
                )
        meta.update(updates)
        if meta.get("eager_sharding", True) is True:
            meta.pop("eager_sharding", None)
        self.set_metadata_items(tuple(sorted((k, hashable_metadata(v)) for k, v in meta.items())))

    def add_axis(self, axis_index: int, axis_name: object) -> None:
        """Called by `vmap`/`scan` with `transform_metadata` when this Variable leaves
        mapped along `axis_index` (after its annotations got `axis_name` there); runs
        the `on_add_axis` hook(s) in its metadata. Subclasses may override it."""
        _run_axis_hooks(self, "on_add_axis", axis_index, axis_name)

    def remove_axis(self, axis_index: int, axis_name: object) -> None:
        """Called by `vmap`/`scan` with `transform_metadata` when this Variable enters
        mapped along `axis_index`; runs the `on_remove_axis` hook(s) in its metadata."""
        _run_axis_hooks(self, "on_remove_axis", axis_index, axis_name)

    @property
    def sharding_names(self) -> tp.Any:
        """Deprecated in Flax: the `out_sharding` metadata (None without it)."""
        warnings.warn("'sharding_names' is deprecated, use 'out_sharding' instead.", DeprecationWarning, 2)
        return dict(self._metadata).get("out_sharding")

    def __getattr__(self, name: str) -> tp.Any:
        if name.startswith("__"):
            raise AttributeError(name)
        for key, value in object.__getattribute__(self, "_metadata"):
            if key == name:
                return value
        raw = object.__getattribute__(self, "raw_value")
        if not self._plain_access:
            raw = self.get_value()
        return getattr(raw, name)

    def __setattr__(self, name: str, value: object) -> None:
        if name in ("value", "raw_value"):
            object.__setattr__(self, name, value) if name == "value" else self.set_raw(value)
        elif name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            self.set_metadata(name, value)

    # -- copies ----------------------------------------------------------------------
    def replace(self, value: object = _MISSING, **metadata: object) -> Variable:
        """A new Variable of the same type with a new value and/or metadata
        (`hijax=`/`ref=` change how the value is kept, as in `copy`)."""
        return self.copy(value, **metadata)

    @property
    def shape(self) -> tuple[int, ...]:
        """The value's shape."""
        return tp.cast("jax.Array", self.get_value()).shape

    def to_state(self, value: object = _MISSING, **updates: object) -> Variable:
        """Flax's other name for `copy`."""
        return self.copy(value, **updates)

    def copy(self, value: object = _MISSING, **updates: object) -> Variable:
        """A new Variable like this one; `value`, metadata, `hijax=` and `ref=` may change."""
        if value is _MISSING:
            value = updates.pop("value", _MISSING)
        hijax = updates.pop("hijax", self.hijax)
        ref = updates.pop("ref", self.ref)
        meta = {**dict(self._metadata), **updates}
        if meta.get("eager_sharding", True) is True:
            meta.pop("eager_sharding", None)
        metadata = tuple(sorted((k, hashable_metadata(v)) for k, v in meta.items()))
        target = varmodes.mode_type(type(self), hijax=bool(hijax), ref=bool(ref))
        if value is _MISSING:
            if target is type(self) and not self.ref and not self.hijax:
                return target.from_parts(self.raw_value, metadata)
            value = self.get_value() if (self.ref or self.hijax) else self.raw_value
        return target.from_parts(target._store(value), metadata)

    @classmethod
    def from_metadata(cls, value: object, metadata: tp.Mapping[str, object]) -> Variable:
        """A Variable of this type from a value and a metadata dict (as `get_metadata` gives)."""
        meta = dict(metadata)
        hijax, ref = bool(meta.pop("hijax", False)), bool(meta.pop("ref", False))
        if meta.get("eager_sharding", True) is True:
            meta.pop("eager_sharding", None)
        target = varmodes.mode_type(cls, hijax=hijax, ref=ref)
        return target.from_parts(
            target._store(value), tuple(sorted((k, hashable_metadata(v)) for k, v in meta.items()))
        )

    def copy_from(self, other: Variable) -> None:
        """Take `other`'s value and metadata (same type required)."""
        if varmodes.base_type(type(self)) is not varmodes.base_type(type(other)):
            raise ValueError(
                f"Cannot copy from incompatible container, expected {type(self).__name__}, "
                f"got {type(other).__name__}"
            )
        if other is self:
            return
        self.set_value(other.get_value())
        self.set_metadata_items(other.metadata_items())

    def update_from_state(self, other: Variable) -> None:
        self.copy_from(other)

    @property
    def type(self) -> type:
        return type(self)

    def __reduce__(self):
        return (_rebuild, (type(self), self.raw_value, self._metadata))

    def __jax_array__(self) -> jax.Array:
        return jnp.asarray(_read(self))

    def __array__(self, dtype: tp.Any = None, copy: bool | None = None):
        import numpy as np

        return np.asarray(_read(self), dtype=dtype)

    def __len__(self) -> int:
        return len(_read(self))

    def __iter__(self) -> tp.Iterator:
        return iter(_read(self))

    def __bool__(self) -> bool:
        return bool(_read(self))

    def __float__(self) -> float:
        return float(_read(self))

    def __int__(self) -> int:
        return int(_read(self))

    def __index__(self) -> int:
        return operator.index(_read(self))

    def __round__(self, ndigits: int | None = None) -> tp.Any:
        return round(_read(self), ndigits)

    def __hash__(self) -> int:
        return id(self)

    def __repr__(self) -> str:
        return variable_repr(self)


_new = object.__new__
_set_raw_value = Variable.__dict__["raw_value"].__set__
_set_metadata = Variable.__dict__["_metadata"].__set__
_set_frame = Variable.__dict__["_frame"].__set__
_set_trace = Variable.__dict__["_trace"].__set__
_set_fresh = Variable.__dict__["_fresh"].__set__
jaxtree.set_fresh_slot(Variable.__dict__["_fresh"].__get__, _set_fresh)
_LOCAL = context.LOCAL
_TRACE_CTX = _jax_core.trace_ctx


def _check_trace(var: Variable) -> None:
    """Raise if `var` is written inside a JAX trace it was not made in (a
    tracer would leak into it), or outside the trace it was made in."""
    now, made = _TRACE_CTX.trace, var._trace
    if now is made or (type(now) is _EvalTrace and type(made) is _EvalTrace):
        return
    name = type(var).__name__
    raise context.TraceContextError(
        f"Cannot mutate {name} from a different trace level: this {name} was made "
        + (
            "outside the JAX transform that writes it"
            if type(made) is _EvalTrace
            else "inside another JAX trace"
        )
        + ", so the write would leak a tracer or be lost. Pass the Variable (or its "
        "Module) as an argument of the transform, "
        "e.g. `nnx.jit(f)(model)`, or of `jax.jit` through `nnx.split`/`nnx.merge` "
        "and return the new state."
    )


def _rebuild(cls: type[Variable], value: object, metadata: tuple) -> Variable:
    return cls.from_parts(value, metadata)


def _set_item(old: tp.Any, key: tp.Any, value: tp.Any) -> tp.Any:
    """`old` with `old[key] = value` applied, as a new value (arrays, dicts, lists)."""
    if key is Ellipsis and (
        not hasattr(old, "shape")
        or (getattr(value, "shape", None) == old.shape and getattr(value, "dtype", None) == old.dtype)
    ):
        return value
    if isinstance(old, dict):
        return {**old, key: value}
    if isinstance(old, list):
        new = list(old)
        new[key] = value
        return new
    return jnp.asarray(old).at[key].set(value)


def _unary(op: tp.Callable[[tp.Any], tp.Any]) -> tp.Callable[[Variable], tp.Any]:
    def method(self: Variable) -> tp.Any:
        return op(_read(self))

    return method


def _read(x: object) -> tp.Any:
    if not isinstance(x, Variable):
        return x
    return x.raw_value if x._plain_access else x.get_value()


_unwrap = _read


Method = tp.Callable[[Variable, tp.Any], tp.Any]


def _binary(op: tp.Callable[[tp.Any, tp.Any], tp.Any]) -> tuple[Method, Method]:
    """The forward (`v + x`) and reflected (`x + v`) methods of `op`."""

    def forward(self: Variable, other: object) -> tp.Any:
        return op(self.raw_value if self._plain_access else self.get_value(), _read(other))

    def backward(self: Variable, other: object) -> tp.Any:
        return op(_read(other), self.raw_value if self._plain_access else self.get_value())

    return forward, backward


def _inplace(op: tp.Callable[[tp.Any, tp.Any], tp.Any]) -> tp.Callable[[Variable, tp.Any], Variable]:
    def inplace(self: Variable, other: object) -> Variable:
        if self._plain_access:
            self.set_raw(op(self.raw_value, _read(other)))
        else:
            self.set_value(op(self.get_value(), _read(other)))
        return self

    return inplace


for _name, _op in {
    "add": operator.add,
    "sub": operator.sub,
    "mul": operator.mul,
    "truediv": operator.truediv,
    "floordiv": operator.floordiv,
    "mod": operator.mod,
    "pow": operator.pow,
    "matmul": operator.matmul,
    "and": operator.and_,
    "or": operator.or_,
    "xor": operator.xor,
    "lshift": operator.lshift,
    "rshift": operator.rshift,
}.items():
    _fwd, _bwd = _binary(_op)
    setattr(Variable, f"__{_name}__", _fwd)
    setattr(Variable, f"__r{_name}__", _bwd)
    # `v += x` writes the Variable (instead of rebinding the name to an array,
    # which would silently turn `self.count += 1` into a plain attribute).
    setattr(Variable, f"__i{_name}__", _inplace(_op))

for _name, _compare in {
    "lt": operator.lt,
    "le": operator.le,
    "gt": operator.gt,
    "ge": operator.ge,
    "eq": operator.eq,
    "ne": operator.ne,
}.items():
    setattr(Variable, f"__{_name}__", _binary(_compare)[0])

for _name, _method in zip(("__divmod__", "__rdivmod__"), _binary(divmod)):  # no in-place form
    setattr(Variable, _name, _method)

_UNARY: dict[str, tp.Callable[[tp.Any], tp.Any]] = {
    "neg": operator.neg,
    "pos": operator.pos,
    "abs": operator.abs,
    "invert": operator.invert,
    "complex": complex,
    "trunc": math.trunc,
    "floor": math.floor,
    "ceil": math.ceil,
}
for _name, _unary_op in _UNARY.items():
    setattr(Variable, f"__{_name}__", _unary(_unary_op))


def _flatten_with_keys(v: Variable):
    return ((jax.tree_util.GetAttrKey("value"), v.raw_value),), v._metadata


def _flatten(v: Variable):
    return (v.raw_value,), v._metadata


def _unflatten(cls: type[Variable], metadata: tuple, children: tp.Sequence) -> Variable:
    """`from_parts`, inlined (one per Variable of every JAX unflatten); a
    Variable rebuilt from a tracer outside nnxfn's transforms is FOREIGN."""
    (value,) = children
    var: Variable = _new(cls)
    _set_raw_value(var, value)
    _set_metadata(var, metadata)
    frames = _LOCAL.frames
    _set_frame(var, frames[-1] if frames else (_FOREIGN if isinstance(value, _Tracer) else None))
    _set_trace(var, _TRACE_REF.value)
    _set_fresh(var, True)
    return var


def _unflatten_by_parts(cls: type[Variable], metadata: tuple, children: tp.Sequence) -> Variable:
    """`_unflatten` for a type with its own `from_parts` (e.g. hijax Variables)."""
    (value,) = children
    var = cls.from_parts(value, metadata)
    if var._frame is None and isinstance(value, _Tracer):
        _set_frame(var, _FOREIGN)
    _set_fresh(var, True)
    return var


_FOREIGN = context.FOREIGN
_Tracer = jax.core.Tracer
_TRACE_REF = _jax_core.trace_state_strong_ref


def _register_pytree(cls: type[Variable]) -> None:
    own_parts = (
        tp.cast(types.MethodType, cls.from_parts).__func__ is not Variable.__dict__["from_parts"].__func__
    )
    unflatten = _unflatten_by_parts if own_parts else _unflatten
    jax.tree_util.register_pytree_with_keys(
        cls, _flatten_with_keys, functools.partial(unflatten, cls), _flatten
    )


_register_pytree(Variable)


class RefVariable(Variable[A]):
    """Mixin of the `ref=True` Variable types: the value is kept in `jax.Ref`s
    (one per array leaf), so writes made inside JAX transforms reach it.
    Built by `varmodes.mode_type`; `isinstance(v, nnx.Param)` still holds."""

    _plain_access = False
    _mode_ref: tp.ClassVar[bool] = True
    _trace_checked = False
    _store = staticmethod(varmodes.to_refs)

    @property
    def ref(self) -> bool:
        return self._mode_ref

    def get_raw_value(self) -> A:
        return self.raw_value if self._mode_ref else varmodes.from_refs(self.raw_value)

    def set_raw_value(self, value: A) -> None:
        object.__setattr__(self, "raw_value", varmodes.to_refs(value))

    def get_value(self, *, index: object = _MISSING) -> A:
        raw = self.raw_value
        if index is _MISSING or index is Ellipsis:
            return varmodes.from_refs(raw)
        if varmodes.is_ref(raw):
            return raw[index]
        return varmodes.from_refs(raw[index])

    def set_value(self, value: A, *, index: object = _MISSING) -> None:
        # A write into a Ref is not checked against transform frames: JAX
        # carries it out of `jax.jit`/`jax.grad`/`scan` to the Variable outside.
        if isinstance(value, Variable):
            value = value.get_value()
        raw = self.raw_value
        if index is _MISSING or index is Ellipsis:
            if varmodes.is_ref(raw) and _fits(raw, value):
                _put(raw, ..., jnp.broadcast_to(jnp.asarray(value, jax.typeof(raw).dtype), raw.shape))
                return
            old, new = jax.tree.structure(raw, is_leaf=varmodes.is_ref), jax.tree.structure(value)
            if old == new and not varmodes.is_ref(raw):  # type: ignore[operator]  # PyTreeDef has __eq__
                for r, x in zip(jax.tree.leaves(raw, is_leaf=varmodes.is_ref), jax.tree.leaves(value)):
                    _put(r, ..., x)
                return
            self.set_raw(varmodes.to_refs(value))
        elif varmodes.is_ref(raw):
            _put(raw, index, value)
        elif varmodes.is_ref(sub := raw[index]) and jax.typeof(sub[...]).shape == jnp.shape(
            tp.cast("jax.Array", value)
        ):
            _put(sub, ..., value)
        else:
            self.set_raw(_set_item(raw, index, varmodes.to_refs(value)))


def _put(ref: tp.Any, index: object, value: tp.Any) -> None:
    """`ref[index] = value`. Under `jax.grad`, a Ref made outside the
    differentiated function (e.g. BatchNorm statistics) cannot hold a value
    that carries a derivative: it gets the value without it (the state is not
    differentiated), as Flax's hijax Variables allow."""
    try:
        ref[index] = value
    except Exception as e:
        if "non-differentiated array reference" not in str(e):
            raise
        ref[index] = jax.lax.stop_gradient(value)


def _fits(ref: tp.Any, value: tp.Any) -> bool:
    """True if `value` can be written into `ref` in place (same dtype kind, broadcastable)."""
    aval = jax.typeof(ref)
    try:
        shape = jnp.broadcast_shapes(aval.shape, jnp.shape(value))
    except ValueError:
        return False
    return shape == aval.shape


class HijaxVariable(RefVariable[A]):
    """Mixin of the `hijax=True` Variable types (`nnx.Variable(x, hijax=True)`):
    writes inside plain JAX transforms reach the Variable; `get_raw_value()`
    gives the plain value unless `ref=True` too.

    Without `ref=True` the value is kept in one JAX `Box`, whose contents may
    change structure inside `jax.jit` (`metrics['new_key'] = x`); with it (or
    for a Variable made inside a JAX trace, where JAX's Box is not reliable),
    in `jax.Ref`s as `RefVariable`."""

    hijax = True
    _mode_ref = False
    _trace_checked = False

    @classmethod
    def _store(cls, value: object) -> tp.Any:
        if cls._mode_ref or varmodes.tracing():
            return varmodes.to_refs(value)
        return varmodes.to_box(value)

    @classmethod
    def from_parts(cls, value: object, metadata: Metadata) -> Variable:
        # Outside a trace a hijax Variable keeps its value in a Box, whatever it was
        # given (plain arrays merged into a hijax GraphDef, Refs a jitted call made).
        if not cls._mode_ref and not varmodes.is_box(value) and not varmodes.tracing():
            value = varmodes.to_box(value)
        return super().from_parts(value, metadata)

    def get_raw_value(self) -> A:
        raw = self.raw_value
        if varmodes.is_box(raw):
            return raw.get()
        return super().get_raw_value()

    def set_raw_value(self, value: A) -> None:
        if self._mode_ref:
            super().set_raw_value(value)
        else:
            self.set_raw(value)

    def set_raw(self, value: object) -> None:
        raw = self.raw_value
        if varmodes.is_box(raw) and not varmodes.is_box(value):
            varmodes.box_set(raw, varmodes.from_refs(value))  # the same Box: JAX carries the write
        else:
            super().set_raw(value)

    def get_value(self, *, index: object = _MISSING) -> A:
        raw = self.raw_value
        if not varmodes.is_box(raw):
            return super().get_value(index=index)
        value = raw.get()
        return value if index is _MISSING or index is Ellipsis else value[index]

    def set_value(self, value: A, *, index: object = _MISSING) -> None:
        raw = self.raw_value
        if not varmodes.is_box(raw):
            super().set_value(value, index=index)
            return
        if isinstance(value, Variable):
            value = value.get_value()
        new = value if index is _MISSING else _set_item(raw.get(), index, value)
        varmodes.box_set(raw, new)


varmodes.register_mode_mixins(ref=RefVariable, hijax=HijaxVariable)


class Param(Variable[A]):
    """A trainable parameter (the default target of `nnx.grad` and `nnx.Optimizer`)."""


class BatchStat(Variable[A]):
    """Running statistics (e.g. BatchNorm mean/var): state, not trained."""


class Cache(Variable[A]):
    """Caches (e.g. the key/value cache of autoregressive attention)."""


class Intermediate(Variable[A]):
    """Values recorded with `Module.sow`."""


class Perturbation(Intermediate[A]):
    """Zeros added to an intermediate with `Module.perturb`, to take its gradient."""


class OptState(Variable[A]):
    """Optimizer state (e.g. Adam moments) held by `nnx.Optimizer`."""


class OptArray(OptState[A]):
    """An optimizer state leaf that mirrors a parameter."""


class RngState(Variable[A]):
    """Random-number state of an `Rngs` stream."""


class RngKey(RngState[A]):
    """The key of an `Rngs` stream."""


class RngCount(RngState[A]):
    """The call counter of an `Rngs` stream."""


# -- collection names <-> Variable types (Linen-style names) ------------------------
_NAMES: dict[str, type] = {}


def register_variable_name(name: str, typ: tp.Any = _MISSING, *, overwrite: bool = False) -> tp.Any:
    """Map a collection name (e.g. `'params'`) to a Variable type; usable as a decorator."""
    if typ is _MISSING:
        return lambda t: register_variable_name(name, t, overwrite=overwrite)
    if not overwrite and name in _NAMES:
        raise ValueError(
            f"Name {name!r} is already mapped to {_NAMES[name].__name__}. Pass overwrite=True to replace it."
        )
    _NAMES[name] = typ
    return typ


def variable_type_from_name(name: str, /, *, base: type = Variable, allow_register: bool = False) -> type:
    """The Variable type registered for a collection name; with
    `allow_register=True`, a new subclass of `base` is made for an unknown name."""
    if name not in _NAMES:
        if not allow_register:
            raise ValueError(
                f"Name {name!r} is not registered. Register it with "
                f"`nnx.register_variable_name({name!r}, MyVariable)` or pass allow_register=True."
            )
        _NAMES[name] = type(name, (base,), {})
    return _NAMES[name]


def variable_name_from_type(typ: type, /, *, allow_register: bool = False) -> str:
    """The collection name registered for a Variable type (inverse of `variable_type_from_name`)."""
    typ = varmodes.base_type(typ)
    for name, t in _NAMES.items():
        if t is typ:
            return name
    if not allow_register:
        raise ValueError(
            f"Type {typ.__name__} is not registered. Register it with "
            f"`nnx.register_variable_name('name', {typ.__name__})` or pass allow_register=True."
        )
    if typ.__name__ in _NAMES:
        raise ValueError(f"Name {typ.__name__!r} is already registered to {_NAMES[typ.__name__]}.")
    return register_variable_name(typ.__name__, typ).__name__


for _name, _type in (
    ("params", Param),
    ("batch_stats", BatchStat),
    ("cache", Cache),
    ("intermediates", Intermediate),
    ("perturbations", Perturbation),
):
    register_variable_name(_name, _type)


def _run_axis_hooks(v: Variable, key: str, axis_index: int, axis_name: object) -> None:
    hooks = dict(v._metadata).get(key)
    if hooks is None:
        return
    for hook in hooks if isinstance(hooks, tuple) else (hooks,):
        hook(v, axis_index, axis_name)
