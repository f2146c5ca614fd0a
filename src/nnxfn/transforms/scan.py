"""`nnx.scan`: `jax.lax.scan` for functions of Modules.

`in_axes` marks one argument as the `Carry` (threaded through iterations;
modules in it keep their state across steps), ints for arguments scanned
along that axis (e.g. a stack of layers made with `nnx.vmap`), `None` for
broadcast arguments (read-only inside). `out_axes` marks the output the same
way. Only scanned state that the body *writes* leaves the scan (stacked);
parameters that are only read are not outputs, so they are not copied.
"""

from __future__ import annotations

import functools
import typing as tp

import jax
import jax.numpy as jnp

from nnxfn.core import errors
from nnxfn.transforms import boundary, spmd
from nnxfn.transforms.axes import entry_axes, leaf_specs
from nnxfn.transforms.common import MethodWrapper, check_not_bound, run_inside


class Carry:
    """Marker for the carried argument/output in `nnx.scan` axes."""

    def __repr__(self) -> str:
        return "nnx.Carry"


Carry = Carry()  # type: ignore[misc]  # used as a value, like Flax's nnx.Carry


def _moveaxis(x: tp.Any, src: int, dst: int) -> tp.Any:
    return x if src == dst else jnp.moveaxis(x, src, dst)


class _Scanned(MethodWrapper):
    def __init__(self, fn: tp.Callable, in_axes: tp.Any, out_axes: tp.Any, length: int | None,
                 reverse: bool, unroll: int | bool, transform_metadata: tp.Mapping | None = None,
                 split_transpose: bool = False):
        check_not_bound(fn, "nnx.scan")
        functools.update_wrapper(self, fn)
        self.fn, self.in_axes, self.out_axes = fn, in_axes, out_axes
        self.length, self.reverse, self.unroll = length, reverse, unroll
        self.transform_metadata = transform_metadata
        self.split_transpose = split_transpose

    def __call__(self, *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        if kwargs:
            raise TypeError("nnx.scan: pass every argument positionally (in_axes refers to them).")
        entry = boundary.enter(args, kwargs)
        specs = leaf_specs("nnx.scan", self.in_axes, (args, kwargs), kwargs_spec=None)
        state_axes, other_axes = entry_axes(entry, specs)
        carry_s = [i for i, a in enumerate(state_axes) if a is Carry]
        scan_s = [i for i, a in enumerate(state_axes) if isinstance(a, int)]
        carry_o = [i for i, a in enumerate(other_axes) if a is Carry]
        scan_o = [i for i, a in enumerate(other_axes) if isinstance(a, int)]
        scanned = [a if isinstance(a, int) and not isinstance(a, bool) else None for a in state_axes]
        inner = spmd.inner_static("nnx.scan", entry, scanned, self.transform_metadata)
        cell: dict = {}

        def body(carry: tuple, xs: tuple) -> tuple:
            values, others = list(entry.values), list(entry.others)
            for i, v in zip(carry_s, carry[0]):
                values[i] = v
            for i, v in zip(carry_o, carry[1]):
                others[i] = v
            for i, v in zip(scan_s, xs[0]):
                values[i] = v
            for i, v in zip(scan_o, xs[1]):
                others[i] = v
            exit_static, out_arrays, emitted, out = run_inside(
                self.fn, inner, values, others, "nnx.scan",
                emit_all=set(carry_s), with_output=True,
            )
            if exit_static.changed is None:
                raise ValueError(
                    "nnx.scan: the body changed the structure of an argument (added or "
                    "removed an attribute); a scan body must keep every argument's structure. "
                    "Create attributes before the scan."
                )
            roles = self._roles(exit_static, state_axes, entry.static.paths)
            cell["exit"], cell["roles"], cell["out"] = exit_static, roles, out
            new_carry_s = [emitted[j] for j, r in enumerate(roles["emitted"]) if r == "carry"]
            new_carry_o = [a for a, r in zip(out_arrays, roles["out"]) if r == "carry"]
            ys_state = [emitted[j] for j, r in enumerate(roles["emitted"]) if r == "scan"]
            ys_out = [a for a, r in zip(out_arrays, roles["out"]) if r == "scan"]
            return (new_carry_s, new_carry_o), (ys_state, ys_out)

        init = ([entry.values[i] for i in carry_s], [entry.others[i] for i in carry_o])
        xs = (
            [_moveaxis(entry.values[i], state_axes[i], 0) for i in scan_s],
            [_moveaxis(entry.others[i], other_axes[i], 0) for i in scan_o],
        )
        (carry_s_out, carry_o_out), (ys_state, ys_out) = jax.lax.scan(
            body, init, xs, length=self.length, reverse=self.reverse, unroll=self.unroll,
            _split_transpose=self.split_transpose,
        )
        exit_static, roles = cell["exit"], cell["roles"]
        emitted, c_it, y_it = [], iter(carry_s_out), iter(ys_state)
        for j, r in enumerate(roles["emitted"]):
            if r == "carry":
                emitted.append(next(c_it))
            else:
                axis = state_axes[exit_static.changed[j]] if j < len(exit_static.changed) else 0
                emitted.append(_moveaxis(next(y_it), 0, axis))
        out_arrays, c_it, y_it = [], iter(carry_o_out), iter(ys_out)
        for r, axis in zip(roles["out"], roles["out_axes"]):
            out_arrays.append(next(c_it) if r == "carry" else _moveaxis(next(y_it), 0, axis))
        if self.transform_metadata and exit_static.graphdef is not None:
            n_in = len(exit_static.changed)
            axes = [scanned[exit_static.changed[j]] if j < n_in else 0
                    for j in range(len(exit_static.paths))]
            exit_static = spmd.outer_exit("nnx.scan", exit_static, entry, scanned, axes, emitted,
                                          self.transform_metadata)
        return boundary.commit(entry, exit_static, out_arrays, emitted)

    def _roles(self, exit_static: boundary.ExitStatic, state_axes: list, paths: tuple) -> dict:
        """Whether each emitted value / output array is carried or stacked."""
        from jax.api_util import flatten_axes

        emitted_roles = []
        for i in exit_static.changed:
            axis = state_axes[i]
            if axis is None:
                raise ValueError(
                    f"nnx.scan: the body wrote {errors.path_str(paths[i][1:], 'arg')}, which "
                    "belongs to a broadcast argument (axis None), so the write cannot be "
                    "kept. Mark that argument nnx.Carry to thread its state through the "
                    "steps, or scan it along an int axis."
                )
            emitted_roles.append("carry" if axis is Carry else "scan")
        n_out_nodes = len(exit_static.paths) - (
            len(exit_static.changed) if exit_static.graphdef is not None else 0
        )
        if exit_static.graphdef is not None:
            emitted_roles += ["scan"] * n_out_nodes
        out_flat = flatten_axes("nnx.scan out_axes", exit_static.out_treedef, self.out_axes)
        out_axes = [a for i, a in enumerate(out_flat) if i not in exit_static.out_positions]
        out_roles = []
        for a in out_axes:
            if a is not Carry and not isinstance(a, int):
                raise ValueError(
                    f"nnx.scan: out_axes entry {a!r} is not supported; use nnx.Carry or an int."
                )
            out_roles.append("carry" if a is Carry else "scan")
        return {"emitted": emitted_roles, "out": out_roles, "out_axes": out_axes}


def scan(f: tp.Callable | None = None, *, length: int | None = None, reverse: bool = False,
         unroll: int | bool = 1, in_axes: tp.Any = (Carry, 0),
         out_axes: tp.Any = (Carry, 0), transform_metadata: tp.Mapping | None = None,
         graph: bool | None = None, graph_updates: bool | None = None,
         _split_transpose: bool = False) -> tp.Any:
    """Like `jax.lax.scan` with Flax NNX's `in_axes`/`out_axes` (see module docstring).

    `transform_metadata={nnx.PARTITION_NAME: 'layers'}`: scanned Variables'
    sharding annotations lose that axis inside the body (see `transforms/spmd.py`).
    `graph`/`graph_updates` (Flax's mode flags) are accepted and change nothing;
    `_split_transpose` is passed to `jax.lax.scan`."""
    if f is None:
        return lambda fn: _Scanned(fn, in_axes, out_axes, length, reverse, unroll,
                                   transform_metadata, _split_transpose)
    return _Scanned(f, in_axes, out_axes, length, reverse, unroll, transform_metadata,
                    _split_transpose)
