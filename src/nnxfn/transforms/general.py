"""`split_inputs` / `merge_inputs`: use plain JAX transforms on functions of Modules.

    @split_inputs        # objects -> pure pytrees; commits the updates after
    @jax.jit             # any JAX transform (jax.vmap, jax.lax.cond, ...)
    @merge_inputs        # pure pytrees -> fresh objects; returns (args, out)
    def forward(model, x):
        return model(x)

`split_inputs(f)(*args)` replaces each argument holding graph objects by a
`PureArg` pytree (its state leaves; the structure is static data) and calls
`f`, which must return `(args_out, out)` as a `merge_inputs` function does;
the state in `args_out` is written to the caller's objects and `out` returned.
`merge_inputs(f)(*pure_args)` rebuilds the objects, calls `f` on them and
returns `(pure args with the updated state, out)`. A transform's axes then
refer to the arguments as usual: `out_axes=(in_axes, ...)` for the state.
"""

from __future__ import annotations

import functools
import typing as tp

import jax

from nnxfn.facade import context
from nnxfn.transforms import boundary
from nnxfn.transforms.boundary import Leaf
from nnxfn.transforms.common import arg_of_leaves, leaf_args

F = tp.TypeVar("F", bound=tp.Callable[..., tp.Any])


class PureArgStatic(tp.NamedTuple):
    """Where one argument's leaves sit among all graph-object arguments' leaves."""

    entry: boundary.EntryStatic  # of all the graph-object arguments together
    argnum: int  # this argument's index among them
    state_indices: tuple[int, ...]  # its state leaves among the entry's values
    other_indices: tuple[int, ...]  # its other leaves among the entry's others
    n_state: int  # the entry's number of state leaves
    n_other: int  # the entry's number of other leaves
    n_args: int  # the number of graph-object arguments


class PureArg:
    """One argument's share of the state of all graph-object arguments of a call."""

    __slots__ = ("static", "state", "others")

    def __init__(self, static: PureArgStatic, state: list[Leaf], others: list[Leaf]):
        self.static = static
        self.state = state
        self.others = others

    def __repr__(self) -> str:
        return f"PureArg(argument {self.static.argnum}, {len(self.state)} state leaves)"


jax.tree_util.register_pytree_node(
    PureArg,
    lambda p: ((p.state, p.others), p.static),
    lambda static, children: PureArg(static, list(children[0]), list(children[1])),
)


def _split(args: tuple) -> tuple[boundary.EntryRecord | None, tuple]:
    positions = [
        i
        for i, a in enumerate(args)
        if any(
            boundary.is_graph_object(x)
            for x in jax.tree_util.tree_leaves(a, is_leaf=boundary.is_graph_object)
        )
    ]
    if not positions:
        return None, args
    entry = boundary.enter(tuple(args[i] for i in positions), {})
    state_owner, other_owner = leaf_args(entry, arg_of_leaves(tuple(args[i] for i in positions), {}))
    pure = list(args)
    for k, i in enumerate(positions):
        static = PureArgStatic(
            entry=entry.static,
            argnum=k,
            state_indices=tuple(j for j, o in enumerate(state_owner) if o == k),
            other_indices=tuple(j for j, o in enumerate(other_owner) if o == k),
            n_state=len(entry.values),
            n_other=len(entry.others),
            n_args=len(positions),
        )
        pure[i] = PureArg(
            static,
            [entry.values[j] for j in static.state_indices],
            [entry.others[j] for j in static.other_indices],
        )
    return entry, tuple(pure)


def split_inputs(f: F | None = None, *, ctxtag: str = "split_merge_inputs") -> F:
    """Call `f` (a JAX transform of a `merge_inputs` function) with graph-object
    arguments replaced by `PureArg` pytrees; commit the state it returns.
    `split_inputs(ctxtag=...)` is a decorator; `ctxtag` (Flax's tag pairing the two
    halves) is accepted: the `PureArg`s carry what `merge_inputs` needs."""
    if f is None:
        return tp.cast(F, functools.partial(split_inputs, ctxtag=ctxtag))

    @functools.wraps(f)
    def wrapper(*args: tp.Any) -> tp.Any:
        entry, pure = _split(args)
        if entry is None:
            args_out, out = f(*pure)
            return out
        args_out, out = f(*pure)
        values = list(entry.values)
        for arg in args_out:
            if isinstance(arg, PureArg):
                for j, v in zip(arg.static.state_indices, arg.state):
                    values[j] = v
        boundary.commit_all(entry, values)
        return out

    return tp.cast(F, wrapper)


def merge_inputs(f: F | None = None, *, ctxtag: str = "split_merge_inputs") -> F:
    """The inner half of `split_inputs`: rebuild objects from `PureArg`s, call `f`,
    return `(pure args with updated state, out)`. `ctxtag` as in `split_inputs`."""
    if f is None:
        return tp.cast(F, functools.partial(merge_inputs, ctxtag=ctxtag))

    @functools.wraps(f)
    def wrapper(*pure: tp.Any) -> tuple:
        parts = [p for p in pure if isinstance(p, PureArg)]
        if not parts:
            return pure, f(*pure)
        first = parts[0].static
        static, n_state, n_other, n_parts = first.entry, first.n_state, first.n_other, first.n_args
        if len(parts) != n_parts:
            raise ValueError(
                f"nnx merge_inputs: got {len(parts)} of the {n_parts} object arguments "
                "split_inputs made; pass every one of them to the merged function."
            )
        values: list = [None] * n_state
        others: list = [None] * n_other
        for p in parts:
            for j, v in zip(p.static.state_indices, p.state):
                values[j] = v
            for j, v in zip(p.static.other_indices, p.others):
                others[j] = v
        frame = context.Frame("nnx merge_inputs")
        context.push_frame(frame)
        try:
            objs, _, inside = boundary.rebuild(static, values, others, frame)
            full, it = [], iter(objs)
            for p in pure:
                full.append(next(it) if isinstance(p, PureArg) else p)
            out = f(*full)
            exit_static, out_arrays, emitted = boundary.leave(inside, out, emit_all=range(n_state))
        finally:
            context.pop_frame(frame)
        if exit_static.changed is None or exit_static.graphdef is not None:
            raise ValueError(
                "nnx merge_inputs: the function changed the structure of its arguments or "
                "returned a graph object; only Variable values may change, and outputs "
                "must be arrays."
            )
        new_values = list(emitted)
        args_out = tuple(
            PureArg(p.static, [new_values[j] for j in p.static.state_indices], list(p.others))
            if isinstance(p, PureArg)
            else None
            for p in pure
        )
        out = boundary.assemble(exit_static.out_treedef, exit_static.out_positions, [], out_arrays)
        return args_out, out

    return tp.cast(F, wrapper)


__all__ = ["split_inputs", "merge_inputs", "PureArg"]
