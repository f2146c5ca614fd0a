"""Marking Pytree attributes as data or static, and asking what is data.

An attribute of a Pytree/Module is *data* (it goes to the State and is a JAX
leaf) or *static* (it goes to the GraphDef). nnxfn decides by value: arrays,
Variables, graph nodes, registered data types, and lists/dicts/tuples holding
them are data; everything else is static. These override it:

- `self.x = nnx.data(v)`: data whatever `v` is (`nnx.data(1)` is a leaf);
- `self.x = nnx.static(v)`: static; `v` must not hold arrays or Variables;
- class-level fields `x: int = nnx.data()` / `nnx.static()` (dataclasses),
  and the older annotations `x: nnx.Data[int]` / `x: nnx.Static[int]`.
"""

from __future__ import annotations

import dataclasses
import typing as tp

import jax
import numpy as np

from nnxfn.core import VariableLike
from nnxfn.core.registry import is_registered_node

A = tp.TypeVar("A")
T = tp.TypeVar("T", bound=type)

DataAnnotation = "__data__"
StaticAnnotation = "__static__"
Data = tp.Annotated[A, DataAnnotation]
"""`x: nnx.Data[int]` marks a class attribute as data (prefer `x: int = nnx.data()`)."""
Static = tp.Annotated[A, StaticAnnotation]
"""`x: nnx.Static[int]` marks a class attribute as static (prefer `x: int = nnx.static()`)."""

_MISSING: tp.Any = dataclasses.MISSING
DATA_TYPES: set[type] = set()


class Marked:
    """`nnx.data(v)` / `nnx.static(v)`: `v` plus how the attribute it is assigned to is kept."""

    __slots__ = ("value", "is_data")

    def __init__(self, value: object, is_data: bool):
        self.value = value
        self.is_data = is_data


def _field(is_data: bool, kwargs: dict) -> tp.Any:
    metadata = dict(kwargs.pop("metadata", None) or {})
    if "static" in metadata:
        raise ValueError(
            f"Cannot use 'static' key in metadata argument for nnx.{'data' if is_data else 'static'}."
        )
    metadata.update(nnx_value=_MISSING, static=not is_data)
    return dataclasses.field(**kwargs, metadata=metadata)


def data(value: object = _MISSING, /, **kwargs: object) -> tp.Any:
    """`self.x = nnx.data(v)`: keep `x` as data (a State leaf) whatever `v` is.
    Without a value (`x: int = nnx.data(default=0)`), a dataclass field."""
    if value is _MISSING:
        return _field(True, kwargs)
    if kwargs:
        raise TypeError("nnx.data() takes either one positional value or field keywords, not both.")
    return Marked(value, True)


def static(value: object = _MISSING, /, **kwargs: object) -> tp.Any:
    """`self.x = nnx.static(v)`: keep `x` in the GraphDef (`v` must not hold arrays).
    Without a value (`x: int = nnx.static()`), a dataclass field."""
    if value is _MISSING:
        return _field(False, kwargs)
    if kwargs:
        raise TypeError("nnx.static() takes either one positional value or field keywords, not both.")
    return Marked(value, False)


def field_status(value: object) -> bool | None:
    """True/False if `value` is an `nnx.data()`/`nnx.static()` field, else None."""
    if isinstance(value, dataclasses.Field) and "static" in value.metadata:
        static_flag = value.metadata["static"]
        if not isinstance(static_flag, bool):
            raise ValueError(f"Invalid 'static' field metadata: expected bool, got {static_flag!r}")
        return not static_flag
    return None


@tp.dataclass_transform(field_specifiers=(dataclasses.field, data, static))
def dataclass(cls: tp.Any = None, /, **kwargs: tp.Any) -> tp.Any:
    """`@nnx.dataclass`: `dataclasses.dataclass` for Pytrees/Modules (nnx's own repr kept);
    fields may be declared with `nnx.data()` / `nnx.static()`."""
    kwargs.setdefault("repr", False)
    if cls is None:
        return lambda c: dataclasses.dataclass(c, **kwargs)
    return dataclasses.dataclass(cls, **kwargs)


def register_data_type(type_: T, /) -> T:
    """Make values of `type_` data on any Pytree attribute (a State leaf, whole)."""
    DATA_TYPES.add(type_)
    return type_


def is_data(value: object, /) -> bool:
    """True for values that are data by themselves: arrays, `jax.Ref`s,
    Variables, graph nodes (Modules, Rngs, ...) and registered data types."""
    return (
        isinstance(value, (jax.Array, np.ndarray, VariableLike, jax.Ref))
        or is_registered_node(value)
        or type(value) in DATA_TYPES
    )


def has_data(value: object, /) -> list[tp.Any]:
    """The data values (see `is_data`) found in the pytree `value`."""
    seen: set[int] = set()

    def stop(x: object) -> bool:
        if id(x) in seen:
            return True
        seen.add(id(x))
        return is_data(x)

    return [x for x in jax.tree.leaves(value, is_leaf=stop) if is_data(x)]


def check_static(obj: object, name: str, value: object, *, explicit: bool) -> None:
    """Raise ValueError if `value`, about to be kept static as `obj.name`, holds data."""
    found = has_data(value)
    if not found:
        return
    kinds = ", ".join(sorted({type(x).__name__ for x in found}))
    where = f"'{name}' of Pytree type '{type(obj).__name__}'"
    if explicit:
        raise ValueError(
            f"Found data in value of type '{type(value)}' annotated with nnx.static(...) "
            f"when setting attribute {where}: it holds {kinds}. Static attributes live in "
            f"the GraphDef; keep arrays as data: `self.{name} = value` or `nnx.data(value)`."
        )
    raise ValueError(
        f"Found unexpected data on value of type '{type(value)}' in static attribute "
        f"{where}: it holds {kinds}. Either remove the data values, or make the attribute "
        f"data: `self.{name} = nnx.data(value)` (or declare it `{name}: ... = nnx.data()`)."
    )


def static_data_error(obj: object, name: str, value: object) -> ValueError:
    kinds = ", ".join(sorted({type(x).__name__ for x in has_data(value)}))
    return ValueError(
        f"Found data on value of type '{type(value)}' assigned to static attribute "
        f"'{name}' of Pytree type '{type(obj).__name__}' (it holds {kinds}). It was marked "
        f"static with nnx.static; to keep it as data write `self.{name} = nnx.data(value)`."
    )


def class_field_status(cls: type) -> dict[str, bool]:
    """name -> is_data for the class-level `nnx.data()`/`nnx.static()` fields and
    `Data[...]`/`Static[...]` annotations `cls` itself declares."""
    status: dict[str, bool] = {}
    for base in (cls,):
        for name, ann in vars(base).get("__annotations__", {}).items():
            if isinstance(ann, str):
                if ann.startswith(("nnx.Data", "Data[")):
                    status[name] = True
                elif ann.startswith(("nnx.Static", "Static[")):
                    status[name] = False
                continue
            meta = getattr(ann, "__metadata__", ())
            if DataAnnotation in meta:
                status[name] = True
            elif StaticAnnotation in meta:
                status[name] = False
        for name, value in vars(base).items():
            found = field_status(value)
            if found is not None:
                status[name] = found
    return status
