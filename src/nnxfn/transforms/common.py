"""Small helpers shared by the transform wrappers."""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import functools
import inspect
import threading
import typing as tp

import jax
from jax._src import core as _jax_core  # the current trace (no public accessor)

from nnxfn import core
from nnxfn.core.filters import Filter
from nnxfn.core.variable_like import VariableLike
from nnxfn.facade import context
from nnxfn.facade.variables import Param
from nnxfn.transforms.boundary import (
    EntryRecord,
    EntryStatic,
    Inside,
    Leaf,
    Left,
    Path,
    is_graph_object,
    leave,
    rebuild,
)


class Static:
    """A leafless pytree node carrying hashable data through a JAX transform
    (Flax's `graphlib.Static`); compared and hashed by its value."""

    __slots__ = ("value",)

    def __init__(self, value: tp.Any):
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Static) and type(other) is type(self) and self.value == other.value

    def __hash__(self) -> int:
        return hash((type(self), self.value))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.value!r})"


jax.tree_util.register_pytree_node(Static, lambda s: ((), s.value), lambda v, _: Static(v))


class CarryMarker:
    """The type of `Carry`, the marker for the carried argument/output in `nnx.scan` axes."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "nnx.Carry"


#: Marks the carried argument/output in `nnx.scan`'s `in_axes`/`out_axes` (used as a value).
Carry = CarryMarker()


def variable_like(template: object, value: Leaf) -> Leaf:
    """`value` in a Variable of `template`'s type and metadata if `template` is a
    Variable (a gradient shaped like the parameter), else `value` itself."""
    if isinstance(template, VariableLike):
        return type(template).from_parts(value, template.metadata_items())
    return value


_SCAN_BODIES = threading.local()  # `.traces`: the JAX traces of the nnx.scan bodies being traced


@contextlib.contextmanager
def tracing_scan_body() -> tp.Iterator[None]:
    """Run while an `nnx.scan` body is traced: remembers the body's JAX trace for
    `in_scan_body`."""
    traces = _SCAN_BODIES.__dict__.setdefault("traces", [])
    traces.append(_jax_core.trace_ctx.trace)
    try:
        yield
    finally:
        traces.pop()


def in_scan_body() -> bool:
    """Whether the current JAX trace is an `nnx.scan` body's, with no transform (grad, vmap,
    jit, ...) between it and the caller."""
    traces: list = getattr(_SCAN_BODIES, "traces", [])
    return bool(traces) and traces[-1] is _jax_core.trace_ctx.trace


def check_not_bound(fn: tp.Callable, name: str) -> None:
    if inspect.ismethod(fn) and is_graph_object(fn.__self__):
        cls = type(fn.__self__).__name__
        raise ValueError(
            f"{name} does not accept bound methods: got the bound method "
            f"{cls}.{fn.__name__}, whose `self` would be "
            "captured by closure, so its updates could not be committed. Transform "
            f"the unbound method and pass the object: `{name}({cls}.{fn.__name__})(obj, ...)`, "
            f"or decorate the method in the class body with `@{name}`."
        )


def signature_of(fn: tp.Callable) -> inspect.Signature | None:
    """`fn`'s signature for `to_positional`, or None if it has none we can use."""
    if isinstance(fn, functools.partial):
        return None
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


def to_positional(sig: inspect.Signature | None, args: tuple, kwargs: dict, name: str) -> tuple[tuple, dict]:
    """Keyword arguments moved to their positions (defaults filled in between), so
    positional axes specs (`in_axes`) cover them; keyword-only ones stay keywords."""
    if not kwargs or sig is None:
        return args, kwargs
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as e:
        raise TypeError(f"{name}: {e}") from None
    bound.apply_defaults()
    return tuple(bound.args), dict(bound.kwargs)


def as_tuple(x: int | tp.Iterable[int] | None) -> tuple[int, ...]:
    """`x` as a tuple of ints (None: empty)."""
    if x is None:
        return ()
    if isinstance(x, int):
        return (x,)
    return tuple(x)


def run_inside(
    fn: tp.Callable[..., tp.Any],
    static: EntryStatic,
    values: tp.Sequence[tp.Any],
    others: tp.Sequence[tp.Any],
    name: str,
    emit_all: tp.Container[int] = (),
) -> Left:
    """Rebuild fresh args, call `fn`, return what leaves (exit static, out arrays,
    emitted values)."""
    return run_inside_with_output(fn, static, values, others, name, emit_all)[0]


def run_inside_with_output(
    fn: tp.Callable[..., tp.Any],
    static: EntryStatic,
    values: tp.Sequence[tp.Any],
    others: tp.Sequence[tp.Any],
    name: str,
    emit_all: tp.Container[int] = (),
) -> tuple[Left, tp.Any]:
    """`run_inside`, also returning `fn`'s raw output (inside the trace)."""
    frame = context.Frame(name)
    context.push_frame(frame)
    try:
        args, kwargs, inside = rebuild(static, values, others, frame)
        out = fn(*args, **kwargs)
        return leave(inside, out, emit_all=emit_all), out
    finally:
        context.pop_frame(frame)


def body_fn(fn: tp.Callable, static: EntryStatic, name: str, cell: dict) -> tp.Callable:
    """`(values, others) -> (out arrays, emitted)` running `fn` on fresh objects;
    the exit description lands in `cell['exit']` (for transforms that trace once)."""

    def body(values: tp.Sequence, others: tp.Sequence) -> tuple:
        exit_static, out_arrays, emitted = run_inside(fn, static, values, others, name)
        cell["exit"] = exit_static
        return out_arrays, emitted

    return body


def no_captured_outputs(fn: tp.Callable, name: str) -> tp.Callable:
    """`fn`, checked (while tracing) not to return a Variable it neither received
    nor created: such an object belongs to another trace level."""

    def checked(*args: object, **kwargs: object) -> tp.Any:
        out = fn(*args, **kwargs)
        nodes = [x for x in jax.tree_util.tree_leaves(out, is_leaf=is_graph_object) if is_graph_object(x)]
        if nodes:
            frame = context.current_frame()
            _, pairs = core.flatten_graph(nodes, copy=False)
            for path, leaf in pairs:
                owner = getattr(leaf, "_frame", frame)
                if owner is not frame:
                    raise ValueError(
                        f"{name}: Cannot return captured Variable "
                        f"{core.errors.path_str(path[1:], f'(output object {path[0]})')}: "
                        f"the function returned a {type(leaf).__name__} it neither received as "
                        "an argument nor created (Cannot extract graph node from different "
                        "trace level). Pass the object as an argument, or return its value."
                    )
        return out

    return checked


class PrefixMapping(abc.ABC):
    """A prefix that answers per Variable: `map_prefix(path, variable)` (Flax's base
    class of `StateAxes`, `StateSharding` and `DiffState`, for `isinstance` checks;
    the transforms read those three)."""

    @abc.abstractmethod
    def map_prefix(self, path: tuple, variable: object, /) -> tp.Any: ...


@dataclasses.dataclass(frozen=True)
class DiffState(PrefixMapping):
    """Differentiate argument `argnum` with respect to the leaves matching `filter`."""

    argnum: int
    filter: Filter = Param

    def map_prefix(self, path: tuple, variable: object, /) -> bool:
        """Whether the leaf at `path` is differentiated."""
        return core.to_predicate(self.filter)(path, variable)


class FilterMap(PrefixMapping):
    """An ordered `{filter: value}` mapping looked up by `(path, leaf)`; the first
    matching filter wins. `StateAxes` and `StateSharding` are FilterMaps.

    Also made from a `State` of values (each path is then its own filter), or
    from an iterable of `(filter, value)` pairs. Compared by content.
    """

    def __init__(
        self, mapping: core.State | tp.Mapping[Filter, object] | tp.Iterable[tuple[Filter, object]], /
    ):
        if isinstance(mapping, core.State):
            items = tuple((core.PathIn(p), getattr(v, "raw_value", v)) for p, v in mapping.flat_state())
        elif isinstance(mapping, tp.Mapping):
            items = tuple(mapping.items())
        else:
            items = tuple(mapping)
        self.mapping = items
        self._preds = tuple((core.to_predicate(f), v) for f, v in self.mapping)

    def lookup(self, path: tuple, leaf: object, default: tp.Any = None) -> tp.Any:
        for pred, value in self._preds:
            if pred(path, leaf):
                return value
        return default

    def resolve(self, path: Path, leaf: object) -> tp.Any:
        """The value for the leaf at `path` (None if no filter matches; `StateAxes` raises)."""
        return self.lookup(path, leaf)

    def map_prefix(self, path: tuple, variable: object, /) -> tp.Any:
        """The value of the first filter matching the leaf at `path` (ValueError if none)."""
        value = self.lookup(path, variable, default=_NO_MATCH)
        if value is _NO_MATCH:
            raise ValueError(
                f"{type(self).__name__}{dict(self.mapping)!r}: no filter matches the leaf at "
                f"{'/'.join(map(str, path)) or '<root>'}. Add `...: <value>` as the last entry."
            )
        return value

    # -- read like a mapping (as Flax's StateAxes / StateSharding) --------------
    @property
    def filters(self) -> tuple:
        return tuple(f for f, _ in self.mapping)

    def items(self) -> tuple:
        return self.mapping

    def keys(self) -> tuple:
        return self.filters

    def values(self) -> tuple:
        return tuple(v for _, v in self.mapping)

    def __getitem__(self, flt: object) -> tp.Any:
        for f, v in self.mapping:
            if f is flt or f == flt:
                return v
        raise KeyError(flt)

    def __iter__(self) -> tp.Iterator:
        return iter(self.filters)

    def __len__(self) -> int:
        return len(self.mapping)

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not self.mapping:  # a subclass keeping its data elsewhere: by identity
            return False
        return isinstance(other, FilterMap) and type(self) is type(other) and self.mapping == other.mapping

    def __hash__(self) -> int:
        if not self.mapping:
            return id(self)
        try:
            return hash((type(self), self.mapping))
        except TypeError:
            return id(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict(self.mapping)!r})"


_NO_MATCH = object()


class MethodWrapper:
    """Base for transformed callables: binds like a function when used as a method."""

    fn: tp.Callable[..., tp.Any]
    __call__: tp.Callable[..., tp.Any]  # each subclass calls its transformed function

    def __get__(self, obj: object, objtype: type | None = None) -> tp.Any:
        if obj is None:
            return self
        return functools.partial(self, obj)


def arg_of_leaves(args: tuple, kwargs: dict) -> list[int | str]:
    """For each leaf of `(args, kwargs)` (graph objects as leaves), its argument:
    the position for positional arguments, the name for keyword arguments."""
    owners: list[int | str] = []
    for i, arg in enumerate(args):
        owners += [i] * len(jax.tree_util.tree_leaves(arg, is_leaf=is_graph_object))
    for name in sorted(kwargs):  # JAX flattens dicts in sorted key order
        owners += [name] * len(jax.tree_util.tree_leaves(kwargs[name], is_leaf=is_graph_object))
    return owners


def leaf_args(entry: EntryRecord, owners: list) -> tuple[list, list]:
    """Argument index of each state leaf and of each `others` leaf of an EntryRecord."""
    node_owner = [owners[p] for p in entry.static.node_positions]
    state = [node_owner[path[0]] for path in entry.static.paths]
    fixed = set(entry.static.node_positions) | {p for p, _ in entry.static.static_leaves}
    others = [owners[i] for i in range(len(owners)) if i not in fixed]
    return state, others


__all__ = [
    "Static",
    "check_not_bound",
    "as_tuple",
    "run_inside",
    "MethodWrapper",
    "Inside",
    "PrefixMapping",
    "DiffState",
]
