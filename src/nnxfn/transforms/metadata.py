"""`nnx.transform_metadata`: keep sharding annotations in step with a mapped axis.

Used under `nnx.vmap`/`nnx.scan` (the same effect as their
`transform_metadata={nnx.PARTITION_NAME: name}` option): inside the decorated
function, Variables of arguments mapped on an int axis see their annotation
without the `partition` entry at that axis; on the way out it is inserted
again, and Variables created inside and returned on an int `out_axes` get it
inserted. The caller's objects receive the updated values.

>>> @nnx.vmap(in_axes=0, out_axes=0)                          # doctest: +SKIP
... @nnx.transform_metadata(in_axes=0, out_axes=0, partition='layers')
... def init(rngs):
...     return Block(rngs)
"""

from __future__ import annotations

import functools
import typing as tp

from nnxfn.transforms import boundary, spmd
from nnxfn.transforms.axes import emitted_templates, entry_axes, exit_axes, leaf_specs
from nnxfn.transforms.common import check_not_bound, run_inside, signature_of, to_positional

F = tp.TypeVar("F", bound=tp.Callable[..., tp.Any])
_NAME = "nnx.transform_metadata"


def transform_metadata(
    f: F | None = None,
    *,
    in_axes: tp.Any = 0,
    out_axes: tp.Any = 0,
    partition: str | None,
    graph: bool | None = None,
) -> tp.Any:
    """Remove the `partition` axis name from mapped arguments' annotations while
    `f` runs and insert it into its outputs' (see the module docstring).
    `graph` (Flax's mode flag) changes nothing."""
    if f is None:
        return functools.partial(transform_metadata, in_axes=in_axes, out_axes=out_axes, partition=partition)
    check_not_bound(f, _NAME)
    metadata = {spmd.PARTITION_NAME: partition}
    sig = signature_of(f)

    @functools.wraps(f)
    def wrapper(*args: object, **kwargs: object) -> tp.Any:
        # keyword arguments take the in_axes entry of their position, as in Flax
        args, kwargs = to_positional(sig, args, kwargs, _NAME)
        entry = boundary.enter(args, kwargs)
        specs = leaf_specs(_NAME, in_axes, (args, kwargs))
        state_axes, _ = entry_axes(entry, specs)
        inner = spmd.inner_static(_NAME, entry, state_axes, metadata)
        exit_static, out_arrays, emitted = run_inside(f, inner, entry.values, entry.others, _NAME)
        if exit_static.graphdef is not None:
            _, emitted_axes = exit_axes(
                _NAME, exit_static, entry, state_axes, specs, out_axes, emitted_templates(exit_static)
            )
            exit_static = spmd.outer_exit(
                _NAME, exit_static, entry, state_axes, emitted_axes, emitted, metadata
            )
        return boundary.commit(entry, exit_static, out_arrays, emitted)

    return wrapper


__all__ = ["transform_metadata"]
