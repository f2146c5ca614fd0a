"""`eval_shape`, `make_jaxpr`, `checkify`, `shard_map` on the boundary."""

from __future__ import annotations

import functools
import typing as tp

import jax
from jax.experimental import checkify as _checkify

from nnxfn.core.trees import TreeState
from nnxfn.facade.varmodes import is_mutable, read
from nnxfn.transforms import boundary
from nnxfn.transforms.axes import (
    PathAxes,
    check_shared_leaf_specs,
    entry_axes,
    exit_axes,
    is_spec_tree,
    leaf_specs,
)
from nnxfn.transforms.common import as_tuple, body_fn, check_not_bound, run_inside
from nnxfn.transforms.sharding import place_state_leaves
from nnxfn.transforms.treemode import Rules, lifted


@lifted(Rules("eval_shape", operands=("args", "kwargs"), unique="always"))
def eval_shape(
    f: tp.Callable,
    *args: tp.Any,
    graph: bool | None = None,
    graph_updates: bool | None = None,
    **kwargs: tp.Any,
) -> tp.Any:
    """Run `f` abstractly. Modules it returns (new ones, or arguments it returns)
    come back with `jax.ShapeDtypeStruct` leaves (an abstract model, e.g. to
    restore a checkpoint into); the arguments are not modified. Under a mesh
    (`jax.set_mesh`, or a Variable's `mesh` metadata), each returned Variable
    whose value has no sharding gets `NamedSharding(mesh, its PartitionSpec)`,
    as Flax does.

    >>> abstract = eval_shape(lambda: Model(rngs=nnx.Rngs(0)))  # doctest: +SKIP
    """
    check_not_bound(f, "nnx.eval_shape")
    entry = boundary.enter(args, kwargs)
    cell: dict = {}
    body = body_fn(f, entry.static, "nnx.eval_shape", cell)

    def inner(values: list, others: list) -> tuple:
        # Refs and Boxes (`ref`/`hijax` Variables' storage) cannot leave a trace: their shapes do.
        out = body(values, others), values
        return jax.tree.map(lambda x: read(x) if is_mutable(x) else x, out)

    (out_arrays, emitted), inputs = jax.eval_shape(inner, entry.values, entry.others)
    exit_static = cell["exit"]
    if exit_static.graphdef is None:
        return boundary.assemble(exit_static.out_treedef, exit_static.out_positions, [], out_arrays)
    # Build the outputs from abstract copies of the inputs: the caller's objects stay as they are.
    from nnxfn import core

    leaves = dict(zip(exit_static.paths, emitted))
    if exit_static.changed is not None:
        emitted_idx = set(exit_static.changed)
        for i, path in enumerate(entry.static.paths):
            if i not in emitted_idx:
                leaves[(0,) + path] = inputs[i]
    _, out_nodes = core.unflatten_graph(exit_static.graphdef, leaves)
    _shard_abstract(out_nodes)
    return boundary.assemble(exit_static.out_treedef, exit_static.out_positions, out_nodes, out_arrays)


def _shard_abstract(nodes: object) -> None:
    """Give each abstract Variable in `nodes` (fresh objects) without a sharding
    the `NamedSharding` its annotation gives on its `mesh` metadata or the
    current mesh (`P()` without an annotation); nothing without a mesh."""
    from nnxfn.core import iter_graph
    from nnxfn.facade.spmd import variable_spec
    from nnxfn.facade.variables import Variable

    context = jax.sharding.get_abstract_mesh()
    for _, var in iter_graph(nodes):
        if not isinstance(var, Variable):
            continue
        value = var.get_raw_value()
        if not isinstance(value, jax.ShapeDtypeStruct) or value.sharding is not None:
            continue
        mesh = var.get_metadata().get("mesh") or (None if context.empty else context)
        if mesh is None:
            continue
        spec = variable_spec(var)
        if spec is not None:
            sharding = jax.sharding.NamedSharding(mesh, spec)
            var.set_raw_value(jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=sharding))


@lifted(Rules("make_jaxpr", unique="always"))
def make_jaxpr(
    f: tp.Callable | None = None,
    *,
    graph: bool | None = None,
    graph_updates: bool | None = None,
    static_argnums: int | tp.Sequence[int] = (),
) -> tp.Callable:
    """Like `jax.make_jaxpr`; the jaxpr's inputs are the arguments' state leaves
    (and array arguments); `static_argnums` arguments are passed through as
    Python values."""
    if f is None:
        return functools.partial(make_jaxpr, static_argnums=static_argnums)
    check_not_bound(f, "nnx.make_jaxpr")
    statics = as_tuple(static_argnums)

    @functools.wraps(f)
    def wrapper(*args: object, **kwargs: object) -> tp.Any:
        fixed = {i: args[i] for i in statics if i < len(args)}
        dyn = tuple(a for i, a in enumerate(args) if i not in fixed)
        entry = boundary.enter(dyn, kwargs)

        def call(*dargs: tp.Any, **kw: tp.Any) -> tp.Any:
            full = list(dargs)
            for i in sorted(fixed):
                full.insert(i, fixed[i])
            return f(*full, **kw)

        def inner(values: list, others: list) -> tuple:
            return run_inside(call, entry.static, values, others, "nnx.make_jaxpr")[1:]

        return jax.make_jaxpr(inner)(entry.values, entry.others)

    return wrapper


@lifted(Rules("checkify"))
def checkify(
    f: tp.Callable,
    errors: tp.Any = _checkify.user_checks,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> tp.Callable:
    """Like `jax.experimental.checkify.checkify`: returns `(error, out)`."""
    check_not_bound(f, "nnx.checkify")

    @functools.wraps(f)
    def wrapper(*args: object, **kwargs: object) -> tp.Any:
        entry = boundary.enter(args, kwargs)
        cell: dict = {}
        inner = body_fn(f, entry.static, "nnx.checkify", cell)

        err, (out_arrays, emitted) = _checkify.checkify(inner, errors=errors)(entry.values, entry.others)
        return err, boundary.commit(entry, cell["exit"], out_arrays, emitted)

    return wrapper


@lifted(Rules("shard_map", prefixes=("in_specs", "out_specs")))
def shard_map(
    f: tp.Callable | None = None,
    *,
    mesh: tp.Any,
    in_specs: object,
    out_specs: object,
    axis_names: tp.AbstractSet[tp.Hashable] = frozenset(),
    check_vma: bool = True,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> tp.Any:
    """Like `jax.shard_map`; a module argument's spec (a PartitionSpec,
    `StateAxes({filter: spec})`, or a Module/State of specs such as
    `nnx.get_partition_spec(model)`) applies to its state leaves, and state it
    writes leaves with the spec it came in with."""
    if f is None:
        return lambda fn: shard_map(
            fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, axis_names=axis_names, check_vma=check_vma
        )
    options = {"axis_names": axis_names} if axis_names else {}
    check_not_bound(f, "nnx.shard_map")
    from jax.sharding import PartitionSpec

    def is_spec(x: object) -> bool:
        return isinstance(x, PartitionSpec)

    @functools.wraps(f)
    def wrapper(*args: object, **kwargs: object) -> tp.Any:
        entry = boundary.enter(args, kwargs)
        specs = leaf_specs(
            "nnx.shard_map",
            _wrap_arg_specs(in_specs, args, is_spec),
            (args, kwargs),
            kwargs_spec=PartitionSpec(),
        )
        check_shared_leaf_specs("nnx.shard_map", entry, [_unwrap(s) for s in specs], "in_specs")
        state_specs, other_specs = entry_axes(entry, [_unwrap(s) for s in specs])
        if isinstance(mesh, jax.sharding.Mesh):  # as Flax, whose shard_map returns state so laid out
            place_state_leaves(entry, [_named(mesh, spec) for spec in state_specs])
        cell: dict = {}
        body = body_fn(f, entry.static, "nnx.shard_map", cell)

        in_tree = (state_specs, other_specs)
        jax.eval_shape(
            jax.shard_map(
                body, mesh=mesh, in_specs=in_tree, out_specs=PartitionSpec(), check_vma=False, **options
            ),
            entry.values,
            entry.others,
        )
        exit_static = cell["exit"]
        out_arr_specs, emitted_specs = exit_axes(
            "nnx.shard_map",
            exit_static,
            entry,
            state_specs,
            [_unwrap(s) for s in specs],
            _wrap_specs(out_specs, is_spec),
            [None] * len(exit_static.paths),
        )
        out_arrays, emitted = jax.shard_map(
            body,
            mesh=mesh,
            in_specs=in_tree,
            out_specs=([_unwrap(s) for s in out_arr_specs], emitted_specs),
            check_vma=check_vma,
            **options,
        )(entry.values, entry.others)
        return boundary.commit(entry, exit_static, out_arrays, emitted)

    return wrapper


def _wrap_arg_specs(in_specs: object, args: tuple, is_spec: tp.Callable) -> tp.Any:
    """`_wrap_specs`, except that a State of specs given for a State argument is
    matched leaf by leaf (both are the same pytree)."""
    from nnxfn import core

    if not isinstance(in_specs, (tuple, list)) or len(in_specs) != len(args):
        return _wrap_specs(in_specs, is_spec)
    return type(in_specs)(
        jax.tree_util.tree_map(_Spec, s, is_leaf=is_spec)
        if isinstance(s, core.State) and isinstance(a, core.State)
        else _wrap_specs(s, is_spec)
        for s, a in zip(in_specs, args)
    )


def _named(mesh: jax.sharding.Mesh, spec: object) -> tp.Any:
    return jax.sharding.NamedSharding(mesh, spec) if isinstance(spec, jax.sharding.PartitionSpec) else None


class _Spec:
    """Wraps a PartitionSpec (a tuple subclass) so axis flattening treats it as a leaf."""

    def __init__(self, spec: object):
        self.spec = spec


def _wrap_specs(specs: object, is_spec: tp.Callable) -> tp.Any:
    # trees of specs: e.g. nnx.get_partition_spec(model), or the graph form of
    # `nnx.prefix(obj, {filter: spec})` (a TreeState)
    def wrap(s: object) -> tp.Any:
        if isinstance(s, TreeState):
            s = s.state
        if is_spec(s):
            return _Spec(s)
        return _Spec(PathAxes(s)) if is_spec_tree(s) else s

    def is_leaf(s: object) -> bool:
        return is_spec(s) or is_spec_tree(s) or isinstance(s, TreeState)

    return jax.tree_util.tree_map(wrap, specs, is_leaf=is_leaf)


def _unwrap(s: object) -> tp.Any:
    if isinstance(s, _Spec):
        return s.spec
    if hasattr(s, "mapping") and hasattr(s, "resolve"):  # StateAxes of specs
        from nnxfn.transforms.axes import StateAxes

        return StateAxes({f: _unwrap(v) for f, v in s.mapping})
    return s
