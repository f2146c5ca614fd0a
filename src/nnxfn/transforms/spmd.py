"""Sharding metadata through transforms, and abstract sharded models.

`nnx.vmap`/`nnx.scan` with `transform_metadata={nnx.PARTITION_NAME: 'layers'}`
keep sharding annotations in step with array ranks: inside the function a
mapped Variable's annotation loses the entry at the mapped axis (it sees one
slice), and Variables leaving on an int axis (e.g. a stack of layers made by
`nnx.vmap` of a constructor) get `'layers'` inserted there. Other keys of
`transform_metadata` name tuple-valued metadata that gets the given value
inserted/removed the same way. The annotations live in the GraphDef, so
this is a rewrite of static data: no per-call cost on arrays.
"""

from __future__ import annotations

import dataclasses
import typing as tp

import jax
from jax.sharding import NamedSharding, PartitionSpec

from nnxfn.core import errors
from nnxfn.core.graphdef import ContainerDef, GraphDef, NodeDef, PytreeDef, VariableDef
from nnxfn.core.variable_like import VariableLike
from nnxfn.facade import spmd
from nnxfn.facade.variables import hashable_metadata
from nnxfn.transforms.axes import variable_type
from nnxfn.transforms.boundary import EntryRecord, EntryStatic, ExitStatic, Path
from nnxfn.transforms.misc import eval_shape

A = tp.TypeVar("A")
PARTITION_NAME = spmd.PARTITION_NAME


# -- GraphDef rewriting ---------------------------------------------------------------
def map_variable_defs(graphdef: GraphDef, fn: tp.Callable[[Path, VariableDef], VariableDef]) -> GraphDef:
    """A GraphDef with every VariableDef (at the path of its leaf) replaced by `fn`'s."""

    def walk(d: object, path: Path) -> tp.Any:
        if isinstance(d, VariableDef):
            return fn(path, d)
        if isinstance(d, NodeDef):
            return NodeDef(d.type, d.index, d.static, _kids(d.children, path))
        if isinstance(d, ContainerDef):
            return ContainerDef(d.type, _kids(d.children, path))
        if isinstance(d, PytreeDef):
            return PytreeDef(d.treedef, _kids(d.children, path))
        return d

    def _kids(children: tuple, path: Path) -> tuple:
        return tuple((k, walk(c, path + (k,))) for k, c in children)

    return GraphDef(walk(graphdef.root, ()), graphdef.num_leaves, graphdef.links)


def variable_defs(graphdef: GraphDef) -> dict[Path, VariableDef]:
    """Every VariableDef of a GraphDef by the path of its leaf."""
    found: dict[Path, VariableDef] = {}

    def record(path: Path, d: VariableDef) -> VariableDef:
        found[path] = d
        return d

    map_variable_defs(graphdef, record)
    return found


# -- one annotation -------------------------------------------------------------------
def _rebuild(spec: object, entries: list) -> tp.Any:
    return PartitionSpec(*entries) if isinstance(spec, PartitionSpec) else tuple(entries)


def _edit(
    metadata: tuple, index: int, transform_metadata: tp.Mapping, where: str, add: bool, name: str
) -> tuple:
    meta = dict(metadata)
    edits: list[tuple[str, tp.Any]] = []
    key = spmd.spec_key(meta)
    if key is not None and meta[key] and PARTITION_NAME in transform_metadata:
        if isinstance(meta[key], NamedSharding):
            raise ValueError(_named_sharding(name, where, meta[key]))
        edits.append((key, transform_metadata[PARTITION_NAME]))
    for k, value in transform_metadata.items():
        if k != PARTITION_NAME and k in meta and isinstance(meta[k], tuple) and meta[k]:
            edits.append((k, value))
    if not edits:
        return metadata
    for k, value in edits:
        entries = list(meta[k])
        if add:
            entries += [None] * (index - len(entries))
            entries.insert(index, value)
        else:
            if index >= len(entries) or entries[index] != value:
                raise ValueError(_missing_axis(name, where, k, meta[k], index, value))
            del entries[index]
        meta[k] = _rebuild(meta[k], entries)
    return tuple(sorted((k, hashable_metadata(v)) for k, v in meta.items()))


def _with_axes(
    graphdef: GraphDef,
    axes: tp.Mapping[Path, tp.Any],
    ndims: tp.Mapping[Path, int],
    transform_metadata: tp.Mapping,
    add: bool,
    name: str,
    root: str,
) -> GraphDef:
    def fn(path: Path, d: VariableDef) -> VariableDef:
        axis = axes.get(path)
        if not isinstance(axis, int) or isinstance(axis, bool):
            return d
        if axis < 0:
            if path not in ndims:
                return d
            axis += ndims[path]
        meta = _edit(d.metadata, axis, transform_metadata, errors.path_str(path[1:], root), add, name)
        if PARTITION_NAME in transform_metadata:
            meta = _call_axis_hook(variable_type(d), meta, add, axis, transform_metadata[PARTITION_NAME])
        return d if meta is d.metadata else VariableDef(d.type, d.index, meta)

    return map_variable_defs(graphdef, fn)


def _has_axis_hooks(static: EntryStatic) -> bool:
    """Whether some Variable of the arguments has add/remove_axis hooks (cached per structure)."""
    found = static.__dict__.get("_axis_hooks")
    if found is None:
        from nnxfn.facade.variables import Variable

        found = any(
            getattr(d.type, "add_axis", None) is not Variable.add_axis
            or any(k == "on_add_axis" for k, _ in d.metadata)
            for d in variable_defs(static.graphdef).values()
        )
        object.__setattr__(static, "_axis_hooks", found)
    return found


def _call_axis_hook(
    var_type: type[VariableLike], meta: tuple, add: bool, axis: int, axis_name: tp.Any
) -> tuple:
    """Run the Variable type's `add_axis`/`remove_axis` (an override, or `on_add_axis`/
    `on_remove_axis` hooks in its metadata) on a stand-in holding `meta`; the
    metadata it leaves is the Variable's from now on. Nothing runs without hooks."""
    from nnxfn.facade.variables import Variable

    method, key = ("add_axis", "on_add_axis") if add else ("remove_axis", "on_remove_axis")
    if getattr(var_type, method, None) is getattr(Variable, method) and all(k != key for k, _ in meta):
        return meta
    stand_in = var_type.from_parts(None, meta)
    getattr(stand_in, method)(axis, axis_name)
    after = stand_in.metadata_items()
    return meta if after == meta else after


# -- on live Variables (Flax's nnx.spmd.add_axis / remove_axis) --------------------------
def add_axis(tree: A, index: int, transform_metadata: tp.Mapping) -> A:
    """Insert the mapped axis `transform_metadata[PARTITION_NAME]` at `index` into the
    sharding annotation (and the other tuple metadata `transform_metadata` names) of
    every Variable in `tree`, in place, then call its `add_axis`; returns `tree`."""
    return _edit_live(tree, index, transform_metadata, add=True)


def remove_axis(tree: A, index: int, transform_metadata: tp.Mapping) -> A:
    """The inverse of `add_axis` (ValueError if the annotation has another axis there)."""
    return _edit_live(tree, index, transform_metadata, add=False)


def _edit_live(tree: A, index: int, transform_metadata: tp.Mapping, add: bool) -> A:
    from nnxfn.facade.variables import Variable

    if PARTITION_NAME not in transform_metadata:
        raise ValueError(
            f"nnx.spmd.{'add' if add else 'remove'}_axis: transform_metadata has no "
            f"{PARTITION_NAME!r} entry (the axis name), got {dict(transform_metadata)!r}."
        )
    name = "nnx.spmd.add_axis" if add else "nnx.spmd.remove_axis"
    for path, v in jax.tree_util.tree_leaves_with_path(tree, is_leaf=lambda x: isinstance(x, Variable)):
        if not isinstance(v, Variable):
            continue
        where = jax.tree_util.keystr(path) or "the Variable"
        meta = _edit(v.metadata_items(), index, transform_metadata, where, add, name)
        if meta is not v.metadata_items():
            v.set_metadata_items(meta)
        axis_name = transform_metadata[PARTITION_NAME]
        v.add_axis(index, axis_name) if add else v.remove_axis(index, axis_name)
    return tree


# -- what vmap/scan call --------------------------------------------------------------
def inner_static(
    name: str, entry: EntryRecord, state_axes: tp.Sequence[tp.Any], transform_metadata: tp.Mapping | None
) -> EntryStatic:
    """The entry record's static with mapped axes removed from the annotations (what the
    function sees inside the transform)."""
    if not transform_metadata:
        return entry.static
    paths = entry.static.paths
    axes = dict(zip(paths, state_axes))
    ndims = {p: len(v.shape) for p, v in zip(paths, entry.values) if hasattr(v, "shape")}
    graphdef = _with_axes(entry.static.graphdef, axes, ndims, transform_metadata, False, name, "arg")
    if graphdef.root == entry.static.graphdef.root:
        return entry.static
    return dataclasses.replace(entry.static, graphdef=graphdef)


def outer_exit(
    name: str,
    exit: ExitStatic,
    entry: EntryRecord,
    state_axes: tp.Sequence[tp.Any],
    emitted_axes: tp.Sequence[tp.Any],
    emitted: tp.Sequence[tp.Any],
    transform_metadata: tp.Mapping | None,
) -> ExitStatic:
    """The exit static with mapped axes inserted back into the annotations of
    the Variables leaving on an int axis (what the caller's objects get)."""
    if not transform_metadata:
        return exit
    if exit.graphdef is None:  # nothing leaves with new metadata: only the hooks run
        if PARTITION_NAME in transform_metadata and _has_axis_hooks(entry.static):
            axes = dict(zip(entry.static.paths, state_axes))
            ndims = {p: len(v.shape) for p, v in zip(entry.static.paths, entry.values) if hasattr(v, "shape")}
            _with_axes(entry.static.graphdef, axes, ndims, transform_metadata, True, name, "arg")
        return exit
    axes = {(0,) + p: a for p, a in zip(entry.static.paths, state_axes)}
    axes.update(zip(exit.paths, emitted_axes))
    ndims = {(0,) + p: len(v.shape) for p, v in zip(entry.static.paths, entry.values) if hasattr(v, "shape")}
    ndims.update({p: len(v.shape) for p, v in zip(exit.paths, emitted) if hasattr(v, "shape")})
    graphdef = _with_axes(exit.graphdef, axes, ndims, transform_metadata, True, name, "out")
    return dataclasses.replace(exit, graphdef=graphdef)


# -- abstract sharded models ------------------------------------------------------------
def get_abstract_model(
    init_fn: tp.Callable[[], tp.Any], mesh: jax.sharding.Mesh, *, graph: bool | None = None
) -> tuple:
    """`(graphdef, abstract_state)` of the model `init_fn` builds, without
    computing it: the state's leaves are `jax.ShapeDtypeStruct`s carrying the
    `NamedSharding` their annotations give on `mesh`.

    Restore a checkpoint straight into it (each array is read onto its own
    shards), or use `nnx.get_named_sharding` of it as jit shardings:

        graphdef, abstract = nnx.get_abstract_model(lambda: Model(rngs=nnx.Rngs(0)), mesh)
        state = nnx.restore_checkpoint(path, abstract)
        model = nnx.merge(graphdef, state)
    """
    from nnxfn.core import split

    with jax.set_mesh(mesh):
        abstract = eval_shape(init_fn)
    graphdef, state = split(abstract)
    shardings = spmd.get_named_sharding(state, mesh)

    def attach(x: tp.Any, sharding: tp.Any) -> tp.Any:
        if sharding is None or not hasattr(x, "shape"):
            return x
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    return graphdef, jax.tree.map(attach, state, shardings)


def as_abstract(tree: A, graph: bool | None = None) -> A:
    """A copy of `tree` whose abstract Variables (shape/dtype values, e.g. from
    `nnx.eval_shape`) that have a sharding annotation but no sharding get one:
    a `jax.ShapeDtypeStruct` with `NamedSharding(mesh, spec)`, the mesh being
    the Variable's `mesh` metadata or the current (abstract) mesh.

    >>> mesh = jax.make_mesh((1,), ('model',))
    >>> with jax.set_mesh(mesh):
    ...     abstract = nnx.as_abstract(nnx.eval_shape(lambda: nnx.Linear(
    ...         2, 4, kernel_metadata={'out_sharding': (None, 'model')}, rngs=nnx.Rngs(0))))
    >>> abstract.kernel.sharding.spec
    P(None, 'model')
    """
    del graph  # accepted for Flax compatibility; one behaviour
    from nnxfn.core import recursive_map
    from nnxfn.facade.variables import Variable

    def add_sharding(path: Path, x: object) -> tp.Any:
        if not isinstance(x, Variable):
            return x
        value = x.raw_value
        if not (hasattr(value, "shape") and hasattr(value, "dtype")):
            return x
        if getattr(value, "sharding", None) is not None or spmd.spec_key(x.get_metadata()) is None:
            return x
        mesh = x.get_metadata("mesh") or jax.sharding.get_abstract_mesh()
        if mesh is None or mesh.empty:
            raise ValueError(_no_mesh_for_abstract(path))
        spec = spmd.variable_spec(x, mesh=mesh, where=errors.path_str(path, "tree"))
        assert spec is not None  # the value is an array: it has a spec
        return x.replace(jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=NamedSharding(mesh, spec)))

    return recursive_map(add_sharding, tree)


def abstract_with_sharding(tree: A, graph: bool | None = None) -> A:
    """Former name of `as_abstract`."""
    return as_abstract(tree, graph=graph)


def get_var_pspec(v: tp.Any) -> PartitionSpec | None:
    """The PartitionSpec of one Variable (logical rules applied), `P()` if it
    has no annotation, None if its value is not an array."""
    return spmd.variable_spec(v)


def _no_mesh_for_abstract(path: Path) -> str:
    return (
        f"as_abstract: {errors.path_str(path, 'tree')} has a sharding annotation but no mesh "
        "to place it on. Call inside `with jax.set_mesh(mesh):`, or give the Variable "
        "`mesh=` metadata."
    )


# -- error messages -----------------------------------------------------------------------
def _missing_axis(name: str, where: str, key: str, spec: object, index: int, value: object) -> str:
    return (
        f"{name}: {where} is mapped along axis {index}, so transform_metadata expects its "
        f"annotation {key}={spec!r} to hold {value!r} at position {index}, but it does not. "
        "Stack the Variables with the same transform_metadata (e.g. create them with "
        f"`nnx.vmap(..., transform_metadata={{nnx.PARTITION_NAME: {value!r}}})`), or "
        "drop transform_metadata for this call."
    )


def _named_sharding(name: str, where: str, sharding: tp.Any) -> str:
    return (
        f"{name}: {where} is annotated with a NamedSharding ({sharding}), whose rank is "
        "fixed; transform_metadata can only add/remove axes of tuple or PartitionSpec "
        "annotations. Annotate it with axis names, e.g. `out_sharding=(None, 'model')`."
    )
