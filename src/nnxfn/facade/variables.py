"""Variables: mutable boxes holding one value plus metadata.

`Param`, `BatchStat`, `Cache`, `Intermediate`, `Perturbation` and user
subclasses differ only by type, which filters select on. Reads:
`v[...]`, `v.value`, `v.get_value()`, arithmetic, `x @ v`. Writes:
`v[...] = x`, `v.value = x`, `v.set_value(x)`.
"""

from __future__ import annotations

import operator
import typing as tp

import jax
import jax.numpy as jnp

from nnxfn.core import VariableLike
from nnxfn.facade import context, spmd

A = tp.TypeVar("A")


def _freeze(value: tp.Any) -> tp.Any:
    """Metadata must be hashable (it lives in the GraphDef): lists -> tuples."""
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    return value


class Variable(VariableLike, tp.Generic[A]):
    """A mutable box for one value (usually an array) with metadata.

    >>> v = Variable(jnp.ones(3), sharding=("data",))
    >>> v[...] = v * 2
    >>> float(v.sum()), v.sharding
    (6.0, ('data',))
    """

    __slots__ = ("raw_value", "_metadata", "_frame", "__weakref__")

    def __init__(self, value: A, **metadata: tp.Any):
        if isinstance(value, Variable):
            metadata = {**value.get_metadata(), **metadata}
            value = value.raw_value
        value, metadata = spmd.unwrap(value, metadata)  # nnx.with_partitioning/with_metadata
        if spmd.spec_key(metadata) is not None:  # eager sharding under `jax.set_mesh`
            value = spmd.shard_value(value, metadata, where=f"this {type(self).__name__}")
        object.__setattr__(self, "raw_value", value)
        object.__setattr__(
            self, "_metadata", tuple(sorted((k, _freeze(v)) for k, v in metadata.items()))
        )
        object.__setattr__(self, "_frame", context.current_frame())

    def __init_subclass__(cls, **kwargs: tp.Any) -> None:
        super().__init_subclass__(**kwargs)
        _register_pytree(cls)

    # -- the core's contract -------------------------------------------------
    def metadata_items(self) -> tuple[tuple[str, tp.Any], ...]:
        return self._metadata

    @classmethod
    def from_parts(cls, value: tp.Any, metadata: tuple[tuple[str, tp.Any], ...]) -> Variable:
        var = _new(cls)  # slot setters: `split`/`merge` make one per leaf
        _set_raw_value(var, value)
        _set_metadata(var, metadata)
        frames = _LOCAL.frames  # context.current_frame(), inlined: one per leaf
        _set_frame(var, frames[-1] if frames else None)
        return var

    def set_raw(self, value: tp.Any) -> None:
        context.check_write(self, self._frame, "the value")
        object.__setattr__(self, "raw_value", value)

    def set_metadata_items(self, metadata: tuple[tuple[str, tp.Any], ...]) -> None:
        context.check_write(self, self._frame, "the metadata")
        object.__setattr__(self, "_metadata", metadata)
        context.metadata_changed()

    # -- value access ------------------------------------------------------------
    @property
    def value(self) -> A:
        return self.raw_value

    @value.setter
    def value(self, value: A) -> None:
        self.set_raw(value.raw_value if isinstance(value, Variable) else value)

    def get_value(self) -> A:
        return self.raw_value

    def set_value(self, value: A) -> None:
        self.value = value

    def __getitem__(self, key: tp.Any) -> tp.Any:
        if key is Ellipsis:
            return self.raw_value
        return self.raw_value[key]

    def __setitem__(self, key: tp.Any, value: tp.Any) -> None:
        if isinstance(value, Variable):
            value = value.raw_value
        old = self.raw_value
        if key is Ellipsis and (
            not hasattr(old, "shape")
            or (
                getattr(value, "shape", None) == old.shape
                and getattr(value, "dtype", None) == old.dtype
            )
        ):
            self.set_raw(value)
        else:
            self.set_raw(jnp.asarray(old).at[key].set(value))

    # -- metadata ------------------------------------------------------------------
    def get_metadata(self, name: str | None = None, default: tp.Any = None) -> tp.Any:
        meta = dict(self._metadata)
        return meta if name is None else meta.get(name, default)

    def set_metadata(self, *args: tp.Any, **kwargs: tp.Any) -> None:
        """`v.set_metadata(name, value)`, `v.set_metadata(**items)` or `v.set_metadata(dict)`."""
        meta = dict(self._metadata)
        if len(args) == 2:
            meta[args[0]] = args[1]
        elif len(args) == 1:
            meta = dict(args[0])
        meta.update(kwargs)
        self.set_metadata_items(tuple(sorted((k, _freeze(v)) for k, v in meta.items())))

    def __getattr__(self, name: str) -> tp.Any:
        if name.startswith("__"):
            raise AttributeError(name)
        for key, value in object.__getattribute__(self, "_metadata"):
            if key == name:
                return value
        return getattr(object.__getattribute__(self, "raw_value"), name)

    def __setattr__(self, name: str, value: tp.Any) -> None:
        if name in ("value", "raw_value"):
            object.__setattr__(self, name, value) if name == "value" else self.set_raw(value)
        elif name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            self.set_metadata(name, value)

    # -- copies ----------------------------------------------------------------------
    def replace(self, value: tp.Any = None, **metadata: tp.Any) -> Variable:
        """A new Variable of the same type with a new value and/or metadata."""
        meta = {**dict(self._metadata), **metadata}
        return type(self).from_parts(
            self.raw_value if value is None else value,
            tuple(sorted((k, _freeze(v)) for k, v in meta.items())),
        )

    def copy(self) -> Variable:
        return type(self).from_parts(self.raw_value, self._metadata)

    @property
    def type(self) -> type:
        return type(self)

    def __reduce__(self):
        return (_rebuild, (type(self), self.raw_value, self._metadata))

    def __jax_array__(self) -> jax.Array:
        return jnp.asarray(self.raw_value)

    def __array__(self, dtype: tp.Any = None, copy: tp.Any = None):
        import numpy as np

        return np.asarray(self.raw_value, dtype=dtype)

    def __len__(self) -> int:
        return len(self.raw_value)

    def __iter__(self) -> tp.Iterator:
        return iter(self.raw_value)

    def __bool__(self) -> bool:
        return bool(self.raw_value)

    def __float__(self) -> float:
        return float(self.raw_value)

    def __int__(self) -> int:
        return int(self.raw_value)

    def __hash__(self) -> int:
        return id(self)

    def __repr__(self) -> str:
        from nnxfn.facade.display import variable_repr

        return variable_repr(self)


_new = object.__new__
_set_raw_value = Variable.__dict__["raw_value"].__set__
_set_metadata = Variable.__dict__["_metadata"].__set__
_set_frame = Variable.__dict__["_frame"].__set__
_LOCAL = context.LOCAL


def _rebuild(cls: type, value: tp.Any, metadata: tuple) -> Variable:
    return cls.from_parts(value, metadata)


def _unwrap(x: tp.Any) -> tp.Any:
    return x.raw_value if isinstance(x, Variable) else x


def _binary(op: tp.Callable) -> tp.Callable:
    def forward(self: Variable, other: tp.Any) -> tp.Any:
        return op(self.raw_value, _unwrap(other))

    def backward(self: Variable, other: tp.Any) -> tp.Any:
        return op(_unwrap(other), self.raw_value)

    return forward, backward


def _inplace(op: tp.Callable) -> tp.Callable:
    def inplace(self: Variable, other: tp.Any) -> Variable:
        self.set_raw(op(self.raw_value, _unwrap(other)))
        return self

    return inplace


for _name, _op in {
    "add": operator.add, "sub": operator.sub, "mul": operator.mul,
    "truediv": operator.truediv, "floordiv": operator.floordiv, "mod": operator.mod,
    "pow": operator.pow, "matmul": operator.matmul, "and": operator.and_,
    "or": operator.or_, "xor": operator.xor, "lshift": operator.lshift,
    "rshift": operator.rshift,
}.items():
    _fwd, _bwd = _binary(_op)
    setattr(Variable, f"__{_name}__", _fwd)
    setattr(Variable, f"__r{_name}__", _bwd)
    # `v += x` writes the Variable (instead of rebinding the name to an array,
    # which would silently turn `self.count += 1` into a plain attribute).
    setattr(Variable, f"__i{_name}__", _inplace(_op))

for _name, _op in {
    "lt": operator.lt, "le": operator.le, "gt": operator.gt, "ge": operator.ge,
    "eq": operator.eq, "ne": operator.ne,
}.items():
    setattr(Variable, f"__{_name}__", _binary(_op)[0])

for _name, _op in {
    "neg": operator.neg, "pos": operator.pos, "abs": operator.abs, "invert": operator.invert,
}.items():
    setattr(Variable, f"__{_name}__", (lambda op: lambda self: op(self.raw_value))(_op))


def _flatten_with_keys(v: Variable):
    return ((jax.tree_util.GetAttrKey("value"), v.raw_value),), v._metadata


def _flatten(v: Variable):
    return (v.raw_value,), v._metadata


def _unflatten(cls: type, metadata: tuple, children: tp.Sequence) -> Variable:
    var = cls.from_parts(children[0], metadata)
    if var._frame is None and isinstance(children[0], jax.core.Tracer):
        object.__setattr__(var, "_frame", context.FOREIGN)
    return var


def _register_pytree(cls: type) -> None:
    jax.tree_util.register_pytree_with_keys(
        cls,
        _flatten_with_keys,
        lambda metadata, children: _unflatten(cls, metadata, children),
        _flatten,
    )


_register_pytree(Variable)


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


def variable_type_from_name(name: str) -> type:
    """A Variable subclass for a collection name (used by Equinox interop)."""
    return {
        "params": Param, "batch_stats": BatchStat, "cache": Cache,
        "intermediates": Intermediate,
    }.get(name, Variable)
