"""Sharding metadata on Variables, on top of JAX's own meshes and shardings.

A Variable records how its array is laid out on a device mesh with the
metadata `out_sharding` (accepted aliases: `sharding`, `sharding_names`):
one entry per array axis, each a mesh axis name, a tuple of names, or None
(replicated). Names may be *logical* (`'embed'`, `'mlp'`) and mapped to mesh
axes by `logical_axis_rules` (a context manager) or a Variable's own
`sharding_rules` metadata.

    >>> init = with_partitioning(jax.nn.initializers.ones, (None, "model"))
    >>> v = nnx.Param(init(jax.random.key(0), (2, 4)))
    >>> v.out_sharding
    (None, 'model')
    >>> get_partition_spec(v)[...]
    P(None, 'model')

Eager sharding: a Variable created with such metadata while a mesh is set
(`with jax.set_mesh(mesh):`) is placed on that mesh at once (inside a trace:
constrained to it). Without a mesh the annotation is only recorded, so the
same model code runs on one CPU and on a pod. `eager_sharding=False` in the
metadata opts a Variable out.

Nothing here invents a runtime: meshes, `NamedSharding`, `jax.device_put`,
`jax.lax.with_sharding_constraint` and `jax.sharding.reshard` are JAX's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import threading
import typing as tp

import jax
import numpy as np
from jax.experimental.layout import Format
from jax.sharding import AbstractMesh, Mesh, NamedSharding, PartitionSpec

from nnxfn.core import VariableLike
from nnxfn.core.modes import ModeSwitch

A = tp.TypeVar("A")
F = tp.TypeVar("F", bound=tp.Callable[..., tp.Any])

PARTITION_NAME = "partition_name"
"""Key of `transform_metadata` naming the mesh axis a vmap/scan axis gets."""

SPEC_KEYS = ("out_sharding", "sharding_names", "sharding")
"""Metadata names read as a sharding annotation, in this order."""

LogicalRules = tp.Sequence[tuple[str, object]]
MeshLike = Mesh | AbstractMesh


# -- annotating initializers ----------------------------------------------------------
@dataclasses.dataclass
class VariableMetadata(tp.Generic[A]):
    """A value plus metadata for the Variable that will hold it.

    Returned by initializers wrapped with `with_metadata`/`with_partitioning`;
    `Variable(VariableMetadata(x, {...}))` is `Variable(x, **{...})`.
    """

    raw_value: A
    metadata: tp.Mapping[str, object] = dataclasses.field(default_factory=dict)


def with_metadata(initializer: F, **metadata: object) -> F:
    """Wrap `initializer` so the Variable built from its result gets `metadata`.

    >>> init = with_metadata(jax.nn.initializers.zeros, tag="frozen")
    >>> nnx.Param(init(jax.random.key(0), (2,))).tag
    'frozen'
    """

    @functools.wraps(initializer)
    def wrapper(*args: object, **kwargs: object) -> VariableMetadata:
        value = initializer(*args, **kwargs)
        if isinstance(value, VariableMetadata):  # nested wrappers: outer wins
            return VariableMetadata(value.raw_value, {**value.metadata, **metadata})
        return VariableMetadata(value, dict(metadata))

    return tp.cast(F, wrapper)


def with_partitioning(
    initializer: F, sharding: object, mesh: jax.sharding.Mesh | None = None, **metadata: object
) -> F:
    """Wrap `initializer` so its Variable is annotated with `out_sharding=sharding`.

    `sharding` has one entry per array axis (a mesh axis name, a tuple of
    names, or None), or is a `PartitionSpec`/`NamedSharding`. With `mesh`,
    that mesh is used for eager sharding instead of the context mesh.
    """
    if mesh is not None:
        metadata["mesh"] = mesh
    return with_metadata(initializer, out_sharding=sharding, **metadata)


def unwrap(value: object, metadata: dict[str, object]) -> tuple[tp.Any, dict[str, object]]:
    """`Variable.__init__` helper: take the value and metadata out of a VariableMetadata."""
    if isinstance(value, VariableMetadata):
        return value.raw_value, {**value.metadata, **metadata}
    return value, metadata


# -- logical axis rules -------------------------------------------------------------
class _Rules(threading.local):
    rules: tuple = ()


_RULES = _Rules()


def _as_rules(rules: tp.Any) -> tuple[tuple[str, object], ...]:
    items = rules.items() if isinstance(rules, tp.Mapping) else rules
    out = []
    for item in items or ():
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise TypeError(_bad_rule(item))
        name, target = item
        out.append((name, tuple(target) if isinstance(target, list) else target))
    return tuple(out)


@contextlib.contextmanager
def logical_axis_rules(rules: LogicalRules | tp.Mapping[str, object]) -> tp.Iterator[None]:
    """Map logical axis names to mesh axes while the context is active.

    >>> with logical_axis_rules([("embed", None), ("mlp", "model")]):
    ...     spec = get_partition_spec(nnx.Param(np.ones((2, 4)), out_sharding=("embed", "mlp")))
    >>> spec[...]
    P(None, 'model')
    """
    old = _RULES.rules
    _RULES.rules = _as_rules(rules)
    try:
        yield
    finally:
        _RULES.rules = old


def set_logical_axis_rules(rules: LogicalRules | tp.Mapping[str, object]) -> None:
    """Set the logical axis rules of this thread (see `logical_axis_rules`)."""
    _RULES.rules = _as_rules(rules)


def get_logical_axis_rules() -> tuple[tuple[str, object], ...]:
    """The logical axis rules of this thread."""
    return _RULES.rules


def _apply_rules(entry: object, rules: dict[str, object]) -> tp.Any:
    if isinstance(entry, str):
        return rules.get(entry, entry)
    if isinstance(entry, tuple):
        names: list[str] = []
        for e in entry:
            mapped = _apply_rules(e, rules)
            if isinstance(mapped, tuple):
                names += [m for m in mapped if m is not None]
            elif mapped is not None:
                names.append(mapped)
        return None if not names else names[0] if len(names) == 1 else tuple(names)
    return entry


# -- reading annotations --------------------------------------------------------------
def _spec_like(x: object) -> bool:
    return isinstance(x, (tuple, list, PartitionSpec, NamedSharding, Format))


def _named(annotation: object) -> NamedSharding | None:
    """The NamedSharding inside an annotation (itself, or a Format's), if any."""
    if isinstance(annotation, Format):
        annotation = annotation.sharding
    return annotation if isinstance(annotation, NamedSharding) else None


def spec_key(metadata: tp.Mapping[str, object]) -> str | None:
    """Which metadata entry holds the sharding annotation, if any."""
    for key in SPEC_KEYS:
        if key in metadata and _spec_like(metadata[key]):
            return key
    return None


def _where(where: str | None) -> str:
    return where or "a Variable"


def partition_spec(
    metadata: tp.Mapping[str, tp.Any],
    *,
    shape: tuple[int, ...] | None = None,
    mesh: MeshLike | None = None,
    where: str | None = None,
    divisible: bool = True,
) -> PartitionSpec | None:
    """The PartitionSpec of an annotation (logical rules applied), checked
    against `shape` and `mesh` when given (`divisible=False`: sizes the mesh
    does not divide are allowed); None when there is no annotation."""
    key = spec_key(metadata)
    if key is None:
        return None
    names = metadata[key]
    if isinstance(names, Format):
        names = names.sharding
    if isinstance(names, NamedSharding):
        names = names.spec
    entries = tuple(names) if names is not None else ()
    local = dict(_as_rules(metadata.get("sharding_rules", ())))
    context = dict(_RULES.rules)
    if local or context:
        rules = {**context, **local}
        entries = tuple(_apply_rules(e, rules) for e in entries)
    spec = PartitionSpec(*entries)
    if shape is not None and len(entries) > len(shape):
        raise ValueError(_rank_mismatch(where, key, metadata[key], spec, shape))
    if mesh is not None:
        check_fits_mesh(spec, mesh, shape=shape if divisible else None, where=where, annotation=metadata[key])
    return spec


def check_fits_mesh(
    spec: PartitionSpec,
    mesh: MeshLike,
    *,
    shape: tuple[int, ...] | None = None,
    where: str | None = None,
    annotation: tp.Any = None,
) -> None:
    """Raise a clear error if `spec` names axes missing from `mesh`, names one
    twice, or splits a dimension into parts that do not divide it."""
    sizes = dict(mesh.shape)
    seen: set[str] = set()
    for dim, entry in enumerate(spec):
        if entry is None or entry is PartitionSpec.UNCONSTRAINED:
            continue
        axes = entry if isinstance(entry, tuple) else (entry,)
        for axis in axes:
            if axis not in sizes:
                raise ValueError(_unknown_axis(where, annotation, spec, axis, mesh))
            if axis in seen:
                raise ValueError(_axis_twice(where, spec, axis))
            seen.add(axis)
        parts = math.prod(sizes[a] for a in axes)
        if shape is not None and dim < len(shape) and shape[dim] % parts:
            raise ValueError(_indivisible(where, spec, shape, dim, parts, mesh))


def variable_spec(
    var: tp.Any, *, mesh: MeshLike | None = None, where: str | None = None
) -> PartitionSpec | None:
    """The PartitionSpec of a Variable: its annotation, `P()` when it has none,
    None when its value is not an array."""
    value = var.raw_value
    shape = getattr(value, "shape", None)
    shape = tuple(shape) if shape is not None else None
    spec = partition_spec(var.get_metadata(), shape=shape, mesh=mesh, where=where)
    if spec is not None:
        return spec
    return PartitionSpec() if shape is not None else None


# -- the current mesh ---------------------------------------------------------------
def current_mesh(*, concrete: bool = False) -> Mesh | AbstractMesh | None:
    """The mesh set with `jax.set_mesh` (concrete outside of traces), or None."""
    try:
        mesh = jax.sharding.get_mesh()
        if not mesh.empty:
            return mesh
    except ValueError:  # inside jax.jit: only the abstract mesh is known
        pass
    if concrete:
        return None
    abstract = jax.sharding.get_abstract_mesh()
    return None if abstract.empty else abstract


# -- eager sharding ---------------------------------------------------------------------
class use_eager_sharding(ModeSwitch):  # noqa: N801 - Flax's name
    """Whether Variables created with a sharding annotation are placed on the
    mesh at once (default True). `nnx.use_eager_sharding(False)` sets it for
    this thread; `with nnx.use_eager_sharding(False):` sets it for the block;
    as a decorator, while the function runs. A Variable's own `eager_sharding=`
    metadata wins over it.

    >>> with use_eager_sharding(False):
    ...     using_eager_sharding()
    False
    >>> using_eager_sharding()
    True
    """

    def __init__(self, value: bool, /):
        if not isinstance(value, bool):
            raise TypeError(f"use_eager_sharding: expected True or False, got {value!r}.")
        super().__init__(value)


def using_eager_sharding() -> bool:
    """The current default of eager sharding (see `use_eager_sharding`)."""
    return use_eager_sharding.current_value()


def shard_value(value: object, metadata: tp.Mapping[str, tp.Any], *, where: str | None = None) -> tp.Any:
    """Place (or, inside a trace, constrain) `value` as its annotation says, if a
    mesh is known (metadata `mesh`, a NamedSharding annotation, or `jax.set_mesh`).
    Values without an annotation, or with `eager_sharding=False` (or, without that
    metadata, under `use_eager_sharding(False)`), are returned as is."""
    key = spec_key(metadata)
    if key is None or not metadata[key]:
        return value
    if not metadata.get("eager_sharding", use_eager_sharding.current_value()):
        return value
    shape = getattr(value, "shape", None)
    if shape is None:
        return value
    annotation = metadata[key]
    named = _named(annotation)
    explicit_mesh = metadata.get("mesh") or (named.mesh if named is not None else None)
    mesh = explicit_mesh or current_mesh()
    if mesh is None:
        return value
    _check_axis_types(mesh, where)
    if isinstance(annotation, Format):  # a layout too: JAX places it as given
        partition_spec(metadata, shape=tuple(shape), mesh=mesh, where=where)
        if isinstance(value, jax.core.Tracer):
            return jax.lax.with_sharding_constraint(value, annotation)
        return jax.device_put(value, annotation)
    # Inside a trace on Auto axes the compiler lays out what the mesh does not
    # divide (Flax: replicated); elsewhere that is an error naming the fix.
    uneven_ok = isinstance(value, jax.core.Tracer) and not _all_explicit(mesh)
    spec = partition_spec(metadata, shape=tuple(shape), mesh=mesh, where=where, divisible=not uneven_ok)
    assert spec is not None  # `key` above: there is an annotation
    return place_value(value, spec, mesh, from_context=explicit_mesh is None)


def _all_explicit(mesh: object) -> bool:
    return bool(getattr(mesh, "are_all_axes_explicit", False))


def _check_axis_types(mesh: MeshLike, where: str | None) -> None:
    kinds = set(getattr(mesh, "axis_types", ()))
    if jax.sharding.AxisType.Auto in kinds and jax.sharding.AxisType.Explicit in kinds:
        raise ValueError(
            f"{_where(where)}: eager sharding needs a mesh whose axes are all Explicit or "
            f"all Auto, got axis types {tuple(mesh.axis_types)} on mesh "
            f"{dict(mesh.shape)}. Make the axis types agree (`jax.make_mesh(..., "
            "axis_types=(AxisType.Auto,) * n)`), or pass `eager_sharding=False`."
        )


def place_value(value: tp.Any, spec: PartitionSpec, mesh: MeshLike, *, from_context: bool = False) -> tp.Any:
    """Lay `value` out as `spec` on `mesh` (device_put, or a constraint inside a trace)."""
    if isinstance(value, jax.core.Tracer):
        target = (
            spec if from_context or not isinstance(mesh, jax.sharding.Mesh) else NamedSharding(mesh, spec)
        )
        if mesh.are_all_axes_explicit:
            return jax.sharding.reshard(value, target)
        return jax.lax.with_sharding_constraint(value, target)
    if isinstance(mesh, jax.sharding.Mesh):
        sharding = NamedSharding(mesh, spec)
        if isinstance(value, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=sharding)
        if isinstance(value, (jax.Array, np.ndarray, np.generic)):
            return jax.device_put(value, sharding)
    return value


def constrain(value: tp.Any, sharding: tp.Any, *, where: str | None = None) -> tp.Any:
    """Inside a trace: `value` laid out as `sharding` (a Sharding, or a
    PartitionSpec under `jax.set_mesh`); `reshard` on Explicit meshes."""
    mesh: Mesh | AbstractMesh
    if isinstance(sharding, PartitionSpec):
        mesh = jax.sharding.get_abstract_mesh()
        if mesh.empty:
            raise ValueError(_no_mesh(where, sharding))
        spec = sharding
    elif isinstance(sharding, NamedSharding):
        mesh, spec = sharding.mesh, sharding.spec
    else:
        return jax.lax.with_sharding_constraint(value, sharding)
    shape = tuple(value.shape)
    if len(spec) > len(shape):
        raise ValueError(_rank_mismatch(where, "sharding", sharding, spec, shape))
    check_fits_mesh(spec, mesh, shape=shape, where=where, annotation=sharding)
    if mesh.are_all_axes_explicit:
        return jax.sharding.reshard(value, sharding)
    return jax.lax.with_sharding_constraint(value, sharding)


# -- trees of Variables ----------------------------------------------------------------
def _is_var(x: object) -> bool:
    return isinstance(x, VariableLike)


def _path_text(path: tuple) -> str:
    return "tree" + jax.tree_util.keystr(path) if path else "the Variable"


def _map_variables(fn: tp.Callable[[tp.Any, str], tp.Any], tree: object) -> tp.Any:
    """Map `fn(spec_source, where)` over the Variables (kept as boxes) and
    array leaves of a pytree (a Module, State, Variable or any pytree)."""

    def leaf(path: tuple, x: tp.Any) -> tp.Any:
        where = _path_text(path)
        if _is_var(x):
            return type(x).from_parts(fn(x, where), x.metadata_items())
        if hasattr(x, "shape"):
            return fn(x, where)
        return None

    return jax.tree_util.tree_map_with_path(leaf, tree, is_leaf=_is_var)


def get_partition_spec(tree: A) -> A:
    """The same tree with each Variable's value replaced by its PartitionSpec
    (`P()` for arrays without an annotation).

    Works on a Module (returns a Module of specs), a State or any pytree;
    feed the result to `jax.lax.with_sharding_constraint`, `nnx.jit`'s
    `in_shardings`/`out_shardings` or `nnx.shard_map`'s specs.
    """

    def spec(x: object, where: str) -> tp.Any:
        return variable_spec(x, where=where) if _is_var(x) else PartitionSpec()

    return _map_variables(spec, tree)


def get_named_sharding(tree: A, mesh: jax.sharding.Mesh) -> A:
    """Like `get_partition_spec`, with `NamedSharding(mesh, spec)` leaves; specs
    are checked against the mesh (axis names, divisibility).

    >>> mesh = jax.make_mesh((1,), ("model",))
    >>> v = nnx.Param(np.ones((2, 4)), out_sharding=(None, "model"))
    >>> get_named_sharding(v, mesh)[...].spec
    P(None, 'model')
    """

    def named(x: object, where: str) -> tp.Any:
        spec = variable_spec(x, mesh=mesh, where=where) if _is_var(x) else PartitionSpec()
        return None if spec is None else NamedSharding(mesh, spec)

    return _map_variables(named, tree)


# -- error messages -------------------------------------------------------------------
def _bad_rule(item: object) -> str:
    return (
        f"logical_axis_rules: each rule must be a (logical_name, mesh_axes) pair, got "
        f"{item!r}. Example: `nnx.logical_axis_rules([('batch', 'data'), ('mlp', 'model')])`."
    )


def _rank_mismatch(
    where: str | None, key: str, annotation: object, spec: PartitionSpec, shape: tuple[int, ...]
) -> str:
    return (
        f"{_where(where)}: its sharding annotation {key}={annotation!r} has {len(spec)} "
        f"entries but the array has rank {len(shape)} (shape {shape}). Give at most one "
        "entry per array axis (missing trailing entries mean replicated). If the array "
        "gained a leading axis from `nnx.vmap`/`nnx.scan` (stacked layers), pass "
        "`transform_metadata={nnx.PARTITION_NAME: 'layers'}` so the annotation gets it too."
    )


def _unknown_axis(
    where: str | None, annotation: tp.Any, spec: PartitionSpec, axis: tp.Any, mesh: MeshLike
) -> str:
    names = tuple(mesh.axis_names)
    return (
        f"{_where(where)}: its sharding {spec} names the axis {axis!r}, which the mesh "
        f"does not have (mesh axes: {names}). Use one of {names} or None, or map the "
        f"logical name to a mesh axis (or None) with "
        f"`nnx.logical_axis_rules([({axis!r}, {names[0] if names else None!r})])`."
    )


def _no_mesh(where: str | None, spec: PartitionSpec) -> str:
    return (
        f"{_where(where)}: the sharding {spec} is a PartitionSpec, which needs a mesh. "
        "Call inside `with jax.set_mesh(mesh):`, or pass `NamedSharding(mesh, spec)`."
    )


def _axis_twice(where: str | None, spec: PartitionSpec, axis: str) -> str:
    return (
        f"{_where(where)}: its sharding {spec} uses the mesh axis {axis!r} for two "
        "array axes; a mesh axis can split at most one array axis."
    )


def _indivisible(
    where: str | None, spec: PartitionSpec, shape: tuple[int, ...], dim: int, parts: int, mesh: MeshLike
) -> str:
    return (
        f"{_where(where)}: its sharding {spec} splits axis {dim} (size {shape[dim]}) of "
        f"shape {shape} into {parts} parts on mesh {dict(mesh.shape)}, which does not divide "
        "it. Choose sizes divisible by the mesh axis size, or shard another axis."
    )
