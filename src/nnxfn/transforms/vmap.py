"""`nnx.vmap` and `nnx.pmap`.

Module state follows `in_axes`: an int maps every leaf of the module along
that axis, `None` broadcasts it, `StateAxes({filter: axis})` chooses per
leaf. Updated state leaves leave on the axis they came in on; modules created
inside and returned use `out_axes`. Default for random state: an `Rngs`
passed with axis `None` is broadcast, so every batch element draws the same
keys; use `nnx.split_rngs(splits=n)` with axis 0 (or
`StateAxes({nnx.RngState: 0, ...: None})`) for a different key per element.
"""

from __future__ import annotations

import functools
import typing as tp

import jax

from nnxfn.core import errors
from nnxfn.transforms import boundary, spmd
from nnxfn.transforms.boundary import Path
from nnxfn.transforms.axes import (
    check_axes_not_objects,
    check_shared_leaf_specs,
    emitted_templates,
    entry_axes,
    exit_axes,
    leaf_specs,
    resolve,
    wrap_node_prefixes,
)
from nnxfn.transforms.common import (
    MethodWrapper,
    arg_of_leaves,
    as_tuple,
    check_not_bound,
    no_captured_outputs,
    run_inside,
    signature_of,
    to_positional,
)
from nnxfn.transforms.treemode import Rules, lifted


class _Mapped(MethodWrapper):
    transform_metadata: tp.Mapping | None = None  # e.g. {nnx.PARTITION_NAME: 'layers'}

    def __init__(
        self, fn: tp.Callable, in_axes: object, out_axes: object, name: str, make: tp.Callable, options: dict
    ):
        check_not_bound(fn, name)
        check_axes_not_objects(name, in_axes, "in_axes")
        check_axes_not_objects(name, out_axes, "out_axes")
        functools.update_wrapper(self, fn)
        self.fn, self.in_axes, self.out_axes = fn, in_axes, out_axes
        self.name, self.make, self.options = name, make, options
        self._sig = signature_of(fn)

    def __call__(self, *args: object, **kwargs: object) -> tp.Any:
        args, kwargs = to_positional(self._sig, args, kwargs, self.name)
        entry = boundary.enter(args, kwargs)
        specs = leaf_specs(self.name, self.in_axes, (args, kwargs))
        check_shared_leaf_specs(self.name, entry, specs, "in_axes")
        state_axes, other_axes = entry_axes(entry, specs)
        inner = spmd.inner_static(self.name, entry, state_axes, self.transform_metadata)
        cell: dict = {}
        fn = no_captured_outputs(self.fn, self.name)

        def body(values: list, others: list) -> tuple:
            exit_static, out_arrays, emitted = run_inside(fn, inner, values, others, self.name)
            cell["exit"] = exit_static
            return out_arrays, emitted

        in_axes = (state_axes, other_axes)
        # Pass 1 (abstract): learn what leaves the function, to know their axes.
        jax.eval_shape(self.make(body, in_axes, 0, self.options), entry.values, entry.others)
        exit_static = cell["exit"]
        _check_returned_inputs(self.name, exit_static, entry, specs, self.out_axes)
        leaves_for_axes = emitted_templates(exit_static)
        out_axes = exit_axes(self.name, exit_static, entry, state_axes, specs, self.out_axes, leaves_for_axes)
        try:
            out_arrays, emitted = self.make(body, in_axes, out_axes, self.options)(entry.values, entry.others)
        except ValueError as e:
            if "axis spec None" not in str(e) or "batched" not in str(e):
                raise
            raise ValueError(
                _broadcast_write(self.name, exit_static, entry, args, kwargs, out_axes, str(e))
            ) from e
        exit_static = spmd.outer_exit(
            self.name, cell["exit"], entry, state_axes, out_axes[1], emitted, self.transform_metadata
        )
        return boundary.commit(entry, exit_static, out_arrays, emitted)


def _broadcast_write(
    name: str,
    exit_static: boundary.ExitStatic,
    entry: boundary.EntryRecord,
    args: tuple,
    kwargs: dict,
    out_axes: tuple,
    jax_msg: str,
) -> str:
    """The message for state of a broadcast (axis None) argument written with a batched value."""
    owners = arg_of_leaves(args, kwargs)
    node_arg = [owners[p] for p in entry.static.node_positions]

    def where(path: tuple) -> str:
        i = node_arg[path[0]]
        return errors.path_str(path[1:], f"args[{i}]" if i >= 0 else "kwargs")

    def keyed(path: tuple) -> str:  # JAX's key-path form, as in its own vmap message
        i = node_arg[path[0]]
        return (f"args[{i}]" if i >= 0 else "kwargs") + "".join(f"[{k!r}]" for k in path[1:])

    paths: list[Path | None]
    if exit_static.graphdef is None:
        paths = [entry.static.paths[i] for i in exit_static.changed or ()]
    else:
        paths = [p[1:] if p[0] == 0 else None for p in exit_static.paths]
    import re

    found = re.search(r"out_axes\[1\]\[(\d+)\]", jax_msg)
    named = paths[int(found.group(1))] if found and int(found.group(1)) < len(paths) else None
    if named is not None:
        written = [named]
    else:  # name every broadcast leaf written
        written = [p for p, a in zip(paths, out_axes[1]) if a is None and p is not None]
    shown = [where(p) for p in written]
    batched = re.search(r"got axis spec None but output was batched on axis \d+", jax_msg)
    return (
        f"at {name.removeprefix('nnx.')} {', '.join(keyed(p) for p in written) or 'state'}, "
        f"{batched.group(0) if batched else 'got axis spec None but output was batched'}.\n"
        f"{name}: the function wrote {', '.join(shown) or 'state'}, which belongs to an "
        "argument broadcast with in_axes None, a value that differs per batch element. "
        "A broadcast Variable can only be written with a value that is the same for "
        "every element. Map that state instead, e.g. `in_axes=(0, ...)` or "
        "`nnx.StateAxes({nnx.BatchStat: 0, ...: None})`, or don't write it inside."
    )


def _check_returned_inputs(
    name: str, exit_static: boundary.ExitStatic, entry: boundary.EntryRecord, specs: list, out_axes: tp.Any
) -> None:
    """An argument returned as an output must leave on the axes it came in on."""
    if exit_static.graphdef is None or not exit_static.out_positions:
        return
    from jax.api_util import flatten_axes

    from nnxfn.core.graphdef import Ref

    outs = exit_static.graphdef.root.children[1][1].children
    origin = dict(exit_static.origins)
    node_index: dict[int, int] = {}
    for pos, n in enumerate(entry.nodes):  # an aliased node's leaves are at its first position
        node_index.setdefault(id(n), pos)
    out_flat = None
    for k, d in outs:
        if not isinstance(d, Ref) or d.index not in origin:
            continue
        j = node_index.get(id(entry.objects[origin[d.index]]))
        if j is None:
            continue
        if out_flat is None:
            out_flat = flatten_axes(f"{name} out_axes", exit_static.out_treedef, wrap_node_prefixes(out_axes))
        in_spec = specs[entry.static.node_positions[j]]
        out_spec = out_flat[exit_static.out_positions[k]]
        for path, leaf in zip(entry.static.paths, entry.live):
            if path[0] != j:
                continue
            a, b = resolve(in_spec, path[1:], leaf), resolve(out_spec, path[1:], leaf)
            if a is not b and a != b:
                raise ValueError(
                    f"{name}: Inconsistent aliasing detected: output {k} is an input object, "
                    f"so its {type(leaf).__name__} at "
                    f"{errors.path_str(path[1:], 'arg')} would be a Duplicate "
                    f"{type(leaf).__name__} with two layouts: in_axes {a!r} but out_axes {b!r}. "
                    "Give it the same axes in in_axes and out_axes, or return a copy (`nnx.clone`)."
                )


def _vmap_maker(body: tp.Callable, in_axes: tp.Any, out_axes: tp.Any, options: dict) -> tp.Callable:
    return jax.vmap(body, in_axes=in_axes, out_axes=out_axes, **options)


def _pmap_maker(body: tp.Callable, in_axes: tp.Any, out_axes: tp.Any, options: dict) -> tp.Callable:
    return jax.pmap(body, in_axes=in_axes, out_axes=out_axes, **options)


@lifted(Rules("vmap", prefixes=("in_axes", "out_axes")))
def vmap(
    f: tp.Callable | None = None,
    *,
    in_axes: tp.Any = 0,
    out_axes: tp.Any = 0,
    axis_name: tp.Hashable | None = None,
    axis_size: int | None = None,
    spmd_axis_name: tp.Any = None,
    transform_metadata: tp.Mapping | None = None,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> tp.Any:
    """Like `jax.vmap`, for functions of Modules (see the module docstring).

    `transform_metadata={nnx.PARTITION_NAME: 'layers'}` keeps sharding
    annotations in step with the mapped axis (see `transforms/spmd.py`).
    With `graph=False`/`graph_updates=False` (Flax's tree mode; see
    `transforms/treemode.py`) only Variable values written inside are committed,
    and Flax's tree-mode errors apply."""
    options = {
        k: v
        for k, v in dict(axis_name=axis_name, axis_size=axis_size, spmd_axis_name=spmd_axis_name).items()
        if v is not None
    }

    def make(fn: tp.Callable) -> _Mapped:
        mapped = _Mapped(fn, in_axes, out_axes, "nnx.vmap", _vmap_maker, options)
        mapped.transform_metadata = transform_metadata
        return mapped

    return make if f is None else make(f)


@lifted(Rules("pmap", prefixes=("in_axes", "out_axes")))
def pmap(
    f: tp.Callable | None = None,
    axis_name: tp.Hashable | None = None,
    *,
    in_axes: tp.Any = 0,
    out_axes: tp.Any = 0,
    static_broadcasted_argnums: int | tp.Iterable[int] = (),
    devices: tp.Any = None,
    backend: str | None = None,
    axis_size: int | None = None,
    donate_argnums: int | tp.Iterable[int] = (),
    transform_metadata: tp.Mapping | None = None,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> tp.Any:
    """Like `jax.pmap`, for functions of Modules. `static_broadcasted_argnums`
    arguments are passed to `f` unchanged (hashable, not mapped);
    `donate_argnums` is accepted as a hint and does not donate;
    `graph=False`/`graph_updates=False`: as `vmap`."""
    opts = {
        k: v
        for k, v in dict(axis_name=axis_name, devices=devices, backend=backend, axis_size=axis_size).items()
        if v is not None
    }
    statics = tuple(sorted(as_tuple(static_broadcasted_argnums)))

    def make(fn: tp.Callable) -> tp.Callable:
        mapped = _Mapped(fn, in_axes, out_axes, "nnx.pmap", _pmap_maker, opts)
        mapped.transform_metadata = transform_metadata
        return _with_static_args(mapped, statics) if statics else mapped

    return make if f is None else make(f)


def _with_static_args(mapped: _Mapped, statics: tuple[int, ...]) -> tp.Callable:
    """Call `mapped` with the static positional args bound into its function."""
    fn, in_axes = mapped.fn, mapped.in_axes

    @functools.wraps(fn)
    def call(*args: object, **kwargs: object) -> tp.Any:
        fixed = {i: args[i] for i in statics if i < len(args)}
        dyn = tuple(a for i, a in enumerate(args) if i not in fixed)

        def inner(*dargs: tp.Any, **kw: tp.Any) -> tp.Any:
            full = list(dargs)
            for i in sorted(fixed):
                full.insert(i, fixed[i])
            return fn(*full, **kw)

        axes = in_axes
        if isinstance(axes, (tuple, list)):
            axes = tuple(a for i, a in enumerate(axes) if i not in fixed)
        step = _Mapped(inner, axes, mapped.out_axes, mapped.name, mapped.make, mapped.options)
        step.transform_metadata = mapped.transform_metadata
        return step(*dyn, **kwargs)

    return call
