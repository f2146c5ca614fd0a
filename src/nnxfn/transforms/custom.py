"""`nnx.custom_vjp`: custom gradients for functions of Modules.

`bwd(*nondiff_args, residuals, g)` returns one cotangent per differentiable
argument; for a Module argument it is a `State` with (some of) the module's
paths, missing leaves count as zero.
"""

from __future__ import annotations

import functools
import typing as tp

import jax
import jax.numpy as jnp
import numpy as np

from nnxfn import core
from nnxfn.core.variable_like import VariableLike
from nnxfn.transforms import boundary
from nnxfn.transforms.common import as_tuple, check_not_bound, run_inside


def _zero_cotangent(x: tp.Any) -> tp.Any:
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.zeros_like(x)
    return np.zeros(x.shape, dtype=jax.dtypes.float0)


class CustomVjp:
    """`nnx.custom_vjp(fun)`: call it like `fun` once `.defvjp(fwd, bwd)` is set."""

    def __init__(self, fun: tp.Callable, nondiff_argnums: tp.Sequence[int] = ()):
        check_not_bound(fun, "nnx.custom_vjp")
        functools.update_wrapper(self, fun)
        self.fun = fun
        self.nondiff_argnums = as_tuple(nondiff_argnums)
        self.fwd: tp.Callable | None = None
        self.bwd: tp.Callable | None = None

    def defvjp(self, fwd: tp.Callable, bwd: tp.Callable) -> None:
        self.fwd, self.bwd = fwd, bwd

    def __call__(self, *args: tp.Any) -> tp.Any:
        if self.fwd is None or self.bwd is None:
            raise TypeError("nnx.custom_vjp: call `.defvjp(fwd, bwd)` before calling the function.")
        nondiff = {i: args[i] for i in self.nondiff_argnums}
        diff_pos = [i for i in range(len(args)) if i not in nondiff]
        diff_args = tuple(args[i] for i in diff_pos)
        entry = boundary.enter(diff_args, {})
        cell: dict = {}

        def full(dargs: tuple) -> list:
            out = [None] * len(args)
            for i, a in nondiff.items():
                out[i] = a
            for i, a in zip(diff_pos, dargs):
                out[i] = a
            return out

        def primal(values: list, others: list) -> list:
            exit_static, out_arrays, emitted = run_inside(
                lambda *d: self.fun(*full(d)), entry.static, values, others, "nnx.custom_vjp"
            )
            if emitted or exit_static.graphdef is not None:
                raise ValueError(
                    "nnx.custom_vjp: the function wrote state or returned a Module; a "
                    "custom-gradient function must be pure in its Module arguments."
                )
            cell["exit"] = exit_static
            return out_arrays

        def fwd(values: list, others: list) -> tuple:
            holder: dict = {}

            def call(*d: tp.Any) -> tp.Any:
                out, res = self.fwd(*full(d))
                holder["res"] = res
                return out

            exit_static, out_arrays, _ = run_inside(call, entry.static, values, others, "nnx.custom_vjp")
            cell["exit"] = exit_static
            return out_arrays, (holder["res"], values, others)

        def bwd(res: tuple, g: list) -> tuple:
            user_res, values, others = res
            exit_static = cell["exit"]
            g_out = boundary.assemble(exit_static.out_treedef, exit_static.out_positions, [], g)
            cts = self.bwd(*[nondiff[i] for i in self.nondiff_argnums], user_res, g_out)
            cts = cts if isinstance(cts, tuple) else (cts,)
            return self._align(entry, diff_args, cts, values, others)

        run = jax.custom_vjp(primal)
        run.defvjp(fwd, bwd)
        out_arrays = run(entry.values, entry.others)
        return boundary.assemble(cell["exit"].out_treedef, cell["exit"].out_positions, [], out_arrays)

    @staticmethod
    def _align(entry: boundary.Entry, diff_args: tuple, cts: tuple, values: list, others: list) -> tuple:
        """Cotangents per state leaf / other leaf, zeros where the user gave none."""
        node_index = {id(n): k for k, n in enumerate(entry.nodes)}
        by_path: dict = {}
        other_cts: list = []
        for arg, ct in zip(diff_args, cts):
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
                        for path, leaf in c.flat_state():
                            by_path[(node_index[id(a)],) + path] = boundary.raw(leaf)
                else:
                    other_cts.append(c)
        state_cts = [
            by_path.get(path, None) if by_path.get(path) is not None else _zero_cotangent(v)
            for path, v in zip(entry.static.paths, values)
        ]
        other_cts = [
            c if c is not None else _zero_cotangent(o) for c, o in zip(other_cts, others)
        ]
        return state_cts, other_cts


def custom_vjp(fun: tp.Callable | None = None, *, nondiff_argnums: int | tp.Sequence[int] = (),
               graph: bool | None = None, graph_updates: bool | None = None) -> tp.Any:
    """Like `jax.custom_vjp` (also as `@nnx.custom_vjp(nondiff_argnums=...)`);
    `graph`/`graph_updates` (Flax's mode flags) are accepted and change nothing."""
    if fun is None:
        return lambda f: CustomVjp(f, nondiff_argnums)
    return CustomVjp(fun, nondiff_argnums)
