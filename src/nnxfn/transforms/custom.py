"""`nnx.custom_vjp`: custom gradients for functions of Modules (Flax's API).

Because Modules have reference semantics, the function's effect on its
arguments' state is an output too. So, as in Flax NNX:

- `fwd(*args)` returns `(out, residuals)`; the function (and `fwd`) may write
  its arguments' Variables and attributes, and the writes are committed;
- `bwd(*nondiff_args, residuals, g)` gets `g = (inputs_g, out_g)`: `out_g`
  is the cotangent of `out`, `inputs_g` has one entry per differentiable
  argument: a `State` of Variables holding the cotangent of that argument's
  state after the call (for a Module or Variable), `None` otherwise;
- `bwd` returns one tangent per differentiable argument: a `State` (or a
  Module) with (some of) the argument's paths for a Module (missing leaves
  count as zero), a Variable or array for a Variable, an array for an array.

`nondiff_argnums` may also hold `DiffState(argnum, filter)`: that argument is
differentiable only in the leaves matching `filter`.
"""

from __future__ import annotations

import functools
import inspect
import typing as tp

import jax
import jax.numpy as jnp
import numpy as np

from nnxfn import core
from nnxfn.core import errors
from nnxfn.core.variable_like import VariableLike
from nnxfn.facade import context
from nnxfn.transforms import boundary
from nnxfn.transforms.autodiff import DiffState
from nnxfn.transforms.common import arg_of_leaves, check_not_bound, leaf_args, run_inside
from nnxfn.transforms.treemode import Rules, lifted


def _zero_cotangent(x: tp.Any) -> tp.Any:
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.zeros_like(x)
    return np.zeros(x.shape, dtype=jax.dtypes.float0)


def _fit(ct: tp.Any, primal: tp.Any) -> tp.Any:
    """A cotangent for `primal`: zeros (float0 for ints) where none or a wrong dtype is given."""
    primal = jnp.asarray(primal)
    if ct is None or not jnp.issubdtype(primal.dtype, jnp.inexact):
        return _zero_cotangent(primal)
    return ct


class CustomVjp:
    """`nnx.custom_vjp(fun)`: call it like `fun` once `.defvjp(fwd, bwd)` is set."""

    def __init__(self, fun: tp.Callable, nondiff_argnums: tp.Sequence[int | DiffState] = ()):
        check_not_bound(fun, "nnx.custom_vjp")
        functools.update_wrapper(self, fun)
        self.fun = fun
        items = (nondiff_argnums,) if isinstance(nondiff_argnums, (int, DiffState)) else nondiff_argnums
        self.nondiff_argnums = tuple(a for a in items if isinstance(a, int))
        self.diff_filters = {a.argnum: a.filter for a in items if isinstance(a, DiffState)}
        repeated = set(self.nondiff_argnums) & set(self.diff_filters)
        if repeated or len(set(self.diff_filters)) != sum(isinstance(a, DiffState) for a in items):
            raise ValueError(f"nnx.custom_vjp: argnum {sorted(repeated)} is repeated in nondiff_argnums.")
        self.fwd: tp.Callable | None = None
        self.bwd: tp.Callable | None = None
        self.symbolic_zeros = False
        try:
            self._sig: inspect.Signature | None = inspect.signature(fun)
        except (TypeError, ValueError):
            self._sig = None

    def defvjp(self, fwd: tp.Callable, bwd: tp.Callable, symbolic_zeros: bool = False) -> None:
        self.fwd, self.bwd, self.symbolic_zeros = fwd, bwd, symbolic_zeros

    def __call__(self, *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        if self.fwd is None or self.bwd is None:
            raise TypeError("nnx.custom_vjp: call `.defvjp(fwd, bwd)` before calling the function.")
        if kwargs:
            from nnxfn.transforms.common import to_positional

            args, kwargs = to_positional(self._sig, args, kwargs, "nnx.custom_vjp")
            if kwargs:
                raise TypeError(f"nnx.custom_vjp: keyword-only arguments {sorted(kwargs)} are not supported.")
        # Non-differentiable arguments holding no arrays or objects stay Python values.
        static = {i: args[i] for i in self.nondiff_argnums if i < len(args) and _is_static(args[i])}
        dyn_pos = [i for i in range(len(args)) if i not in static]
        entry = boundary.enter(tuple(args[i] for i in dyn_pos), {})
        state_owner, other_owner = (
            [dyn_pos[o] for o in owners]
            for owners in leaf_args(entry, arg_of_leaves(tuple(args[i] for i in dyn_pos), {}))
        )
        diff_args = [i for i in range(len(args)) if i not in self.nondiff_argnums]

        def with_static(fn: tp.Callable) -> tp.Callable:
            if not static:
                return fn

            def call(*dyn: tp.Any) -> tp.Any:
                full, it = [], iter(dyn)
                for i in range(len(args)):
                    full.append(static[i] if i in static else next(it))
                return fn(*full)

            return call

        diff_state = self._diff_state_leaves(entry, state_owner)
        cell: dict = {}
        n_leaves = len(entry.values)

        def after_state(exit_static: boundary.ExitStatic, emitted: list, values: list) -> list:
            """Every state leaf's value after the call, in entry order."""
            if exit_static.changed is not None:
                after = list(values)
                for i, v in zip(exit_static.changed, emitted):
                    after[i] = v
                return after
            index = {(0,) + p: i for i, p in enumerate(entry.static.paths)}
            after = [None] * n_leaves
            for path, v in zip(exit_static.paths, emitted):
                i = index.get(path)
                if i is None:
                    raise ValueError(_new_state(path))
                after[i] = v
            if any(v is None for v in after):
                missing = entry.static.paths[after.index(None)]
                raise ValueError(
                    f"nnx.custom_vjp: the function removed {errors.path_str(missing[1:], 'arg')}; "
                    "it may update its arguments but not remove their state."
                )
            return after

        def primal(values: list, others: list) -> tuple:
            exit_static, out_arrays, emitted = run_inside(
                with_static(self.fun), entry.static, values, others, "nnx.custom_vjp"
            )
            cell["exit"] = exit_static
            return out_arrays, after_state(exit_static, emitted, values)

        def fwd(values: list, others: list) -> tuple:
            holder: dict = {}

            def call(*a: tp.Any) -> tp.Any:
                out, res = self.fwd(*a)
                holder["res"] = res
                return out

            exit_static, out_arrays, emitted = run_inside(
                with_static(call), entry.static, values, others, "nnx.custom_vjp"
            )
            cell["exit"] = exit_static
            return (out_arrays, after_state(exit_static, emitted, values)), (holder["res"], values, others)

        def bwd(res: tuple, g: tuple) -> tuple:
            user_res, values, others = res
            out_g_arrays, state_g = g
            exit_static = cell["exit"]
            n_out = exit_static.out_treedef.num_leaves
            out_g = boundary.assemble(
                exit_static.out_treedef,
                exit_static.out_positions,
                [None] * len(exit_static.out_positions),
                out_g_arrays,
            )
            del n_out
            inputs_g = tuple(
                self._state_cotangent(entry, args[i], state_owner, i, state_g) for i in diff_args
            )
            nondiff = [args[i] for i in self.nondiff_argnums]
            cts = self.bwd(*nondiff, user_res, (inputs_g, out_g))
            cts = cts if isinstance(cts, (tuple, list)) else (cts,)
            if len(cts) != len(diff_args):
                raise ValueError(
                    f"nnx.custom_vjp: bwd returned {len(cts)} tangents but the function has "
                    f"{len(diff_args)} differentiable arguments (nondiff_argnums="
                    f"{self.nondiff_argnums}); return one per differentiable argument."
                )
            return self._align(entry, args, diff_args, cts, values, others, diff_state, other_owner)

        run = jax.custom_vjp(primal)
        run.defvjp(fwd, bwd, symbolic_zeros=False)
        out_arrays, after = run(entry.values, entry.others)
        exit_static = cell["exit"]
        if exit_static.changed is not None:
            # Commit every leaf we may write (its value now depends on the call, so later
            # uses send their cotangent through `inputs_g`); captured objects only if written.
            frame = context.current_frame()
            keep = sorted(
                set(exit_static.changed)
                | {i for i, v in enumerate(entry.live) if getattr(v, "_frame", frame) is frame}
            )
            exit_static = _with_changed(exit_static, tuple(keep), entry.static.paths)
            emitted = [after[i] for i in keep]
        else:
            index = {(0,) + p: i for i, p in enumerate(entry.static.paths)}
            emitted = [after[index[p]] for p in exit_static.paths]
        return boundary.commit(entry, exit_static, out_arrays, emitted)

    def _diff_state_leaves(self, entry: boundary.Entry, state_owner: list) -> set[int]:
        """Indices of the state leaves that are differentiable."""
        preds = {a: core.to_predicate(f) for a, f in self.diff_filters.items()}
        out = set()
        for i, (owner, path, leaf) in enumerate(zip(state_owner, entry.static.paths, entry.live)):
            if owner in self.nondiff_argnums:
                continue
            if owner in preds and not preds[owner](path[1:], leaf):
                continue
            out.add(i)
        return out

    @staticmethod
    def _state_cotangent(
        entry: boundary.Entry, arg: tp.Any, state_owner: list, argnum: int, state_g: list
    ) -> tp.Any:
        """`inputs_g` entry: a State of Variables (cotangents) for a graph argument."""
        if not boundary.is_node(arg):
            return None
        pairs = []
        for i, (owner, path) in enumerate(zip(state_owner, entry.static.paths)):
            if owner == argnum:
                pairs.append((path[1:], _like(entry.live[i], state_g[i])))
        if isinstance(arg, VariableLike):
            return pairs[0][1] if pairs else None
        return core.State.from_flat_path(pairs)

    @staticmethod
    def _align(
        entry: boundary.Entry,
        args: tuple,
        diff_args: list,
        cts: tp.Sequence,
        values: list,
        others: list,
        diff_state: set[int],
        other_owner: list,
    ) -> tuple:
        """Cotangents per state leaf / other leaf, zeros where the user gave none."""
        node_index = {id(n): k for k, n in enumerate(entry.nodes)}
        by_path: dict = {}
        by_arg_other: dict[int, list] = {}
        for argnum, ct in zip(diff_args, cts):
            arg = args[argnum]
            a_leaves = jax.tree_util.tree_leaves(arg, is_leaf=boundary.is_node)
            c_leaves = jax.tree_util.tree_leaves(
                ct, is_leaf=lambda x: isinstance(x, core.State) or boundary.is_node(x) or x is None
            )
            if len(c_leaves) != len(a_leaves):
                c_leaves = [ct] * len(a_leaves) if len(a_leaves) == 1 else c_leaves
            for a, c in zip(a_leaves, c_leaves):
                if isinstance(a, VariableLike):  # a bare Variable: its cotangent is one value
                    if c is not None:
                        by_path[(node_index[id(a)],)] = boundary.raw(c)
                elif boundary.is_node(a):
                    if c is not None:
                        flat = c.flat_state() if isinstance(c, core.State) else core.state(c).flat_state()
                        for path, leaf in flat:
                            by_path[(node_index[id(a)],) + tuple(path)] = boundary.raw(leaf)
                elif boundary._plain(a) is None:
                    by_arg_other.setdefault(argnum, []).append(c)
        state_cts = [
            _fit(by_path.get(path) if i in diff_state else None, v)
            for i, (path, v) in enumerate(zip(entry.static.paths, values))
        ]
        iters = {k: iter(v) for k, v in by_arg_other.items()}
        other_cts = []
        for owner, o in zip(other_owner, others):
            it = iters.get(owner)
            other_cts.append(_fit(next(it, None) if it is not None else None, o))
        return state_cts, other_cts


def _is_static(x: tp.Any) -> bool:
    """No arrays and no graph objects in `x`: it can stay a Python value."""
    from nnxfn.core.graph import is_array

    return all(
        not boundary.is_node(leaf) and not is_array(leaf)
        for leaf in jax.tree_util.tree_leaves(x, is_leaf=boundary.is_node)
    )


def _like(template: tp.Any, value: tp.Any) -> tp.Any:
    if isinstance(template, VariableLike):
        return type(template).from_parts(value, template.metadata_items())
    return value


def _with_changed(exit_static: boundary.ExitStatic, changed: tuple, paths: tuple) -> boundary.ExitStatic:
    """`exit_static` emitting the input leaves `changed` (and nothing else)."""
    import dataclasses

    if exit_static.graphdef is None:
        return dataclasses.replace(exit_static, changed=changed)
    if len(exit_static.paths) != len(exit_static.changed):  # an output object's leaves
        raise ValueError(
            "nnx.custom_vjp: the function returned a Module or Variable it created; return "
            "arrays (or its arguments) from a custom-gradient function."
        )
    return dataclasses.replace(exit_static, changed=changed, paths=tuple((0,) + paths[i] for i in changed))


def _new_state(path: tuple) -> str:
    where = errors.path_str(path[2:], "out" if path[0] == 1 else "arg")
    return (
        f"nnx.custom_vjp: the function created {where}; a custom-gradient function may "
        "update its arguments' state but not add new state or return new objects."
    )


@lifted(Rules("custom_vjp", fns=("fun",), prefixes=("nondiff_argnums",), unique="always"))
def custom_vjp(
    fun: tp.Callable | None = None,
    *,
    nondiff_argnums: int | tp.Sequence[int | DiffState] = (),
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> tp.Any:
    """Like `jax.custom_vjp` for functions of Modules, with Flax NNX's `bwd`
    convention (see the module docstring); also `@nnx.custom_vjp(nondiff_argnums=...)`.
    `graph`/`graph_updates` (Flax's mode flags) are accepted and change nothing."""
    if fun is None:
        return lambda f: CustomVjp(f, nondiff_argnums)
    return CustomVjp(fun, nondiff_argnums)
