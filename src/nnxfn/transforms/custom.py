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

With `graph=False` or `graph_updates=False` (Flax's tree mode) the arguments
are plain pytrees, as in Flax: `bwd(*nondiff_args, residuals, out_g)` gets the
output cotangent alone (and, if it takes `updates_g`, the cotangents of the
Variables the function wrote, shaped like the arguments with None elsewhere),
returns tangents shaped like the arguments (e.g. `jax.tree.map(lambda x: x, m)`
with its Variables set), `DiffState` is refused, and only Variable values
written by the function or `fwd` reach the caller.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing as tp

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from nnxfn import core
from nnxfn.core import errors
from nnxfn.core import treemode as core_tm
from nnxfn.core.variable_like import VariableLike
from nnxfn.facade import context
from nnxfn.transforms import boundary
from nnxfn.transforms.boundary import Leaf
from nnxfn.transforms.common import (
    DiffState,
    arg_of_leaves,
    check_not_bound,
    leaf_args,
    run_inside,
    to_positional,
    variable_like,
)
from nnxfn.transforms.treemode import Rules, Structure, lifted


def _zero_cotangent(x: ArrayLike) -> jax.Array | np.ndarray:
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.zeros_like(x)
    return np.zeros(x.shape, dtype=jax.dtypes.float0)


def _fit(ct: Leaf, primal: Leaf) -> Leaf:
    """A cotangent for `primal`: zeros (float0 for ints) where none or a wrong dtype is given."""
    primal = jnp.asarray(primal)
    if ct is None or not jnp.issubdtype(primal.dtype, jnp.inexact):
        return _zero_cotangent(primal)
    return ct


class CustomVjp:
    """`nnx.custom_vjp(fun)`: call it like `fun` once `.defvjp(fwd, bwd)` is set."""

    def __init__(
        self,
        fun: tp.Callable[..., tp.Any],
        nondiff_argnums: int | DiffState | tp.Sequence[int | DiffState] = (),
        *,
        simple: bool = False,
    ):
        check_not_bound(fun, "nnx.custom_vjp")
        self.simple = simple  # Flax's graph_updates=False / graph=False `bwd` convention
        functools.update_wrapper(self, fun)
        self.fun = fun
        items = (nondiff_argnums,) if isinstance(nondiff_argnums, (int, DiffState)) else nondiff_argnums
        self.nondiff_argnums = tuple(items)  # as given
        #: the argument numbers JAX treats as non-differentiable (the ints)
        self.jax_nondiff_argnums = tuple(a for a in items if isinstance(a, int))
        self.diff_filters = {a.argnum: a.filter for a in items if isinstance(a, DiffState)}
        #: as Flax's: argnum -> False (not differentiable) or DiffState(-1, filter)
        self.diff_filter = {a: False for a in self.jax_nondiff_argnums} | {
            i: DiffState(-1, f) for i, f in self.diff_filters.items()
        }
        repeated = set(self.jax_nondiff_argnums) & set(self.diff_filters)
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

    def __call__(self, *args: object, **kwargs: object) -> tp.Any:
        if self.fwd is None or self.bwd is None:
            raise TypeError("nnx.custom_vjp: call `.defvjp(fwd, bwd)` before calling the function.")
        if kwargs:
            args, kwargs = to_positional(self._sig, args, kwargs, "nnx.custom_vjp")
            if kwargs:
                raise TypeError(f"nnx.custom_vjp: keyword-only arguments {sorted(kwargs)} are not supported.")
        call = _VjpCall.enter(self, self.fwd, self.bwd, args)
        run = jax.custom_vjp(call.primal)
        run.defvjp(call.fwd, call.bwd, symbolic_zeros=False)
        out_arrays, after, returned = run(call.entry.values, call.entry.others)
        exit_static, emitted = call.to_commit(after, returned)
        return boundary.commit(call.entry, exit_static, out_arrays, emitted)

    def tangents(self, cts: object, diff_args: tp.Sequence[int]) -> tp.Sequence[object]:
        """What `bwd` returned, as one tangent per differentiable argument."""
        cts = cts if isinstance(cts, (tuple, list)) else (cts,)
        if len(cts) != len(diff_args):
            raise ValueError(
                f"nnx.custom_vjp: bwd returned {len(cts)} tangents but the function has "
                f"{len(diff_args)} differentiable arguments (nondiff_argnums="
                f"{self.jax_nondiff_argnums}); return one per differentiable argument."
            )
        return cts

    def diff_state_leaves(self, entry: boundary.EntryRecord, state_owner: list[int]) -> set[int]:
        """Indices of the state leaves that are differentiable."""
        preds = {a: core.to_predicate(f) for a, f in self.diff_filters.items()}
        out = set()
        for i, (owner, path, leaf) in enumerate(zip(state_owner, entry.static.paths, entry.live)):
            if owner in self.jax_nondiff_argnums:
                continue
            if owner in preds and not preds[owner](path[1:], leaf):
                continue
            out.add(i)
        return out


@dataclasses.dataclass(eq=False)
class _VjpCall:
    """One call of a `CustomVjp`: its flattened arguments, and what the traces of
    `primal`/`fwd` found (`exit`, `updated`) for `bwd` and the commit."""

    vjp: CustomVjp
    fwd_rule: tp.Callable[..., tp.Any]
    bwd_rule: tp.Callable[..., tp.Any]
    args: tuple[object, ...]
    static: dict[int, object]  # non-differentiable arguments kept as Python values
    entry: boundary.EntryRecord  # the other arguments, flattened
    state_owner: list[int]  # argument number of each state leaf
    other_owner: list[int]  # argument number of each other leaf
    diff_args: list[int]  # the differentiable argument numbers
    diff_state: set[int]  # indices of the differentiable state leaves
    exit: boundary.ExitStatic | None = None
    updated: set[int] = dataclasses.field(default_factory=set)  # state leaves the function wrote

    @classmethod
    def enter(
        cls,
        vjp: CustomVjp,
        fwd_rule: tp.Callable[..., tp.Any],
        bwd_rule: tp.Callable[..., tp.Any],
        args: tuple[object, ...],
    ) -> _VjpCall:
        # Non-differentiable arguments holding no arrays or objects stay Python values.
        static = {i: args[i] for i in vjp.jax_nondiff_argnums if i < len(args) and _is_static(args[i])}
        dyn_pos = [i for i in range(len(args)) if i not in static]
        dyn_args = tuple(args[i] for i in dyn_pos)
        entry = boundary.enter(dyn_args, {})
        state_owner, other_owner = (
            [dyn_pos[o] for o in owners] for owners in leaf_args(entry, arg_of_leaves(dyn_args, {}))
        )
        return cls(
            vjp=vjp,
            fwd_rule=fwd_rule,
            bwd_rule=bwd_rule,
            args=args,
            static=static,
            entry=entry,
            state_owner=state_owner,
            other_owner=other_owner,
            diff_args=[i for i in range(len(args)) if i not in vjp.jax_nondiff_argnums],
            diff_state=vjp.diff_state_leaves(entry, state_owner),
        )

    def with_static(self, fn: tp.Callable[..., tp.Any]) -> tp.Callable[..., tp.Any]:
        """`fn` taking only the arguments that are not kept static."""
        if not self.static:
            return fn
        static, n_args = self.static, len(self.args)

        def call(*dyn: object) -> tp.Any:
            full, it = [], iter(dyn)
            for i in range(n_args):
                full.append(static[i] if i in static else next(it))
            return fn(*full)

        return call

    def after_state(
        self, exit_static: boundary.ExitStatic, emitted: list[Leaf], values: list[Leaf]
    ) -> list[Leaf]:
        """Every state leaf's value after the call, in entry order."""
        if exit_static.changed is not None:
            after = list(values)
            for i, v in zip(exit_static.changed, emitted):
                after[i] = v
            return after
        paths = self.entry.static.paths
        index = {(0,) + p: i for i, p in enumerate(paths)}
        found: list[Leaf] = [None] * len(paths)
        for path, v in zip(exit_static.paths, emitted):
            if path[0] == 1:  # a leaf of an object the function returned
                continue
            at = index.get(path)
            if at is None:
                raise ValueError(_new_state(path))
            found[at] = v
        if any(v is None for v in found):
            missing = paths[next(i for i, v in enumerate(found) if v is None)]
            raise ValueError(
                f"nnx.custom_vjp: the function removed {errors.path_str(missing[1:], 'arg')}; "
                "it may update its arguments but not remove their state."
            )
        return found

    def _run(
        self, fn: tp.Callable[..., tp.Any], values: list[Leaf], others: list[Leaf]
    ) -> tuple[list[Leaf], list[Leaf], list[Leaf]]:
        """Run `fn` on fresh objects; (out arrays, every state leaf after, returned objects' leaves)."""
        exit_static, out_arrays, emitted = run_inside(
            self.with_static(fn), self.entry.static, values, others, "nnx.custom_vjp"
        )
        self.exit = exit_static
        after = self.after_state(exit_static, emitted, values)
        self.updated = _updated(exit_static, after, values)
        return out_arrays, after, _returned_leaves(exit_static, emitted)

    def primal(self, values: list[Leaf], others: list[Leaf]) -> tuple[list[Leaf], list[Leaf], list[Leaf]]:
        return self._run(self.vjp.fun, values, others)

    def fwd(
        self, values: list[Leaf], others: list[Leaf]
    ) -> tuple[tuple[list[Leaf], list[Leaf], list[Leaf]], tuple[object, list[Leaf], list[Leaf]]]:
        holder: dict[str, object] = {}
        fwd_rule, simple = self.fwd_rule, self.vjp.simple

        def call(*a: object) -> tp.Any:
            before = Structure(a, {}) if simple else None
            out, res = fwd_rule(*a)
            if before is not None:  # as `fun` (see `lifted`): only Variable values leave
                before.restore()
            holder["res"] = res
            return out

        primal_out = self._run(call, values, others)
        return primal_out, (holder["res"], values, others)

    def bwd(
        self, res: tuple[object, list[Leaf], list[Leaf]], g: tuple[list[Leaf], list[Leaf], list[Leaf]]
    ) -> tuple[list[Leaf], list[Leaf]]:
        user_res, values, others = res
        out_g_arrays, state_g, returned_g = g
        exit_static = self.exit
        assert exit_static is not None  # set while tracing primal/fwd
        entry = self.entry
        out_g = boundary.assemble(
            exit_static.out_treedef,
            exit_static.out_positions,
            _returned_cotangents(entry, exit_static, state_g, returned_g),
            out_g_arrays,
        )
        if self.vjp.simple:
            return self.simple_bwd(user_res, out_g, state_g, values, others)
        inputs_g = tuple(
            _state_cotangent(entry, self.args[i], self.state_owner, i, state_g) for i in self.diff_args
        )
        nondiff = [self.args[i] for i in self.vjp.jax_nondiff_argnums]
        cts = self.bwd_rule(*nondiff, user_res, (inputs_g, out_g))
        return self.align(self.vjp.tangents(cts, self.diff_args), values, others)

    def simple_bwd(
        self,
        user_res: object,
        out_g: object,
        state_g: list[Leaf],
        values: list[Leaf],
        others: list[Leaf],
    ) -> tuple[list[Leaf], list[Leaf]]:
        """`bwd(*nondiff, res, out_g[, updates_g=...])` (Flax's graph_updates=False form)."""
        args, updated = self.args, self.updated
        nondiff = [args[i] for i in self.vjp.jax_nondiff_argnums]
        kwargs = {}
        if _accepts(self.bwd_rule, "updates_g"):
            kwargs["updates_g"] = tuple(
                _updates_cotangent(self.entry, arg, self.state_owner, argnum, state_g, updated)
                for argnum, arg in enumerate(args)
            )
        cts = self.bwd_rule(*nondiff, user_res, out_g, **kwargs)
        state_cts, other_cts = self.align(self.vjp.tangents(cts, self.diff_args), values, others)
        # A leaf the function did not write passes through unchanged: any cotangent its
        # later uses sent back (after a structural change committed it) is the identity's.
        for i, g in enumerate(state_g):
            if (
                i not in updated
                and g is not None
                and jnp.issubdtype(jnp.asarray(values[i]).dtype, jnp.inexact)
            ):
                state_cts[i] = tp.cast(jax.Array, state_cts[i]) + tp.cast(jax.Array, g)
        return state_cts, other_cts

    def to_commit(self, after: list[Leaf], returned: list[Leaf]) -> tuple[boundary.ExitStatic, list[Leaf]]:
        """The exit description and emitted values to commit after the call."""
        exit_static, entry = self.exit, self.entry
        assert exit_static is not None  # set while tracing primal
        if exit_static.changed is not None and self.vjp.simple:
            # Only the leaves the function wrote leave it: later uses of the others
            # read the caller's values, so their cotangents never pass through `bwd`.
            keep = sorted(self.updated)
        elif exit_static.changed is not None:
            # Commit every leaf we may write (its value now depends on the call, so later
            # uses send their cotangent through `inputs_g`); captured objects only if written.
            frame = context.current_frame()
            keep = sorted(
                set(exit_static.changed)
                | {i for i, v in enumerate(entry.live) if getattr(v, "_frame", frame) is frame}
            )
        else:
            index = {(0,) + p: i for i, p in enumerate(entry.static.paths)}
            it = iter(returned)
            return exit_static, [after[index[p]] if p[0] == 0 else next(it) for p in exit_static.paths]
        exit_static = _with_changed(exit_static, tuple(keep), entry.static.paths)
        return exit_static, [after[i] for i in keep] + returned

    def align(
        self, cts: tp.Sequence[object], values: list[Leaf], others: list[Leaf]
    ) -> tuple[list[Leaf], list[Leaf]]:
        """Cotangents per state leaf / other leaf, zeros where the user gave none."""
        entry, args, diff_args = self.entry, self.args, self.diff_args
        diff_state, other_owner = self.diff_state, self.other_owner
        node_index = {id(n): k for k, n in enumerate(entry.nodes)}
        by_path: dict = {}
        by_arg_other: dict[int, list] = {}
        for argnum, ct in zip(diff_args, cts):
            arg = args[argnum]
            a_leaves, a_treedef = jax.tree_util.tree_flatten(arg, is_leaf=boundary.is_graph_object)
            try:  # same structure as the argument (a State for a State, a tuple for a tuple)
                c_leaves = a_treedef.flatten_up_to(ct)  # type: ignore[attr-defined]  # PyTreeDef method, not in jaxlib's stubs
            except (TypeError, ValueError):  # a State (or a Module) per Module, None for zeros
                c_leaves = jax.tree_util.tree_leaves(
                    ct,
                    is_leaf=lambda x: isinstance(x, core.State) or boundary.is_graph_object(x) or x is None,
                )
            if len(c_leaves) != len(a_leaves):
                c_leaves = [ct] * len(a_leaves) if len(a_leaves) == 1 else c_leaves
            for a, c in zip(a_leaves, c_leaves):
                if isinstance(a, VariableLike):  # a bare Variable: its cotangent is one value
                    if c is not None:
                        by_path[(node_index[id(a)],)] = boundary.raw(c)
                elif boundary.is_graph_object(a):
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


def _state_cotangent(
    entry: boundary.EntryRecord, arg: object, state_owner: list[int], argnum: int, state_g: list[Leaf]
) -> object:
    """`inputs_g` entry: a State of Variables (cotangents) for a graph argument."""
    if not boundary.is_graph_object(arg):
        return None
    pairs = []
    for i, (owner, path) in enumerate(zip(state_owner, entry.static.paths)):
        if owner == argnum:
            pairs.append((path[1:], variable_like(entry.live[i], state_g[i])))
    if isinstance(arg, VariableLike):
        return pairs[0][1] if pairs else None
    return core.State.from_flat_path(pairs)


def _updated(exit_static: boundary.ExitStatic, after: list, values: list) -> set[int]:
    """Indices of the state leaves the function wrote."""
    if exit_static.changed is not None:
        return set(exit_static.changed)
    return {i for i, (a, v) in enumerate(zip(after, values)) if a is not v}


def _accepts(fn: tp.Callable, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _updates_cotangent(
    entry: boundary.EntryRecord,
    arg: object,
    state_owner: list[int],
    argnum: int,
    state_g: list[Leaf],
    updated: set[int],
) -> object:
    """`updates_g` entry: `arg`'s structure holding, for each Variable the function
    wrote, that Variable's cotangent (same type and metadata), and None elsewhere."""
    if not boundary.is_graph_object(arg):
        return None
    cts = {
        id(entry.live[i]): variable_like(entry.live[i], state_g[i])
        for i in updated
        if state_owner[i] == argnum
    }
    if isinstance(arg, VariableLike):
        return cts.get(id(arg))
    is_var = lambda x: isinstance(x, VariableLike)  # noqa: E731
    pairs, treedef = jax.tree_util.tree_flatten_with_path(arg, is_leaf=is_var)
    fresh = jax.tree_util.tree_unflatten(treedef, [cts.get(id(leaf), leaf) for _, leaf in pairs])
    for path, leaf in pairs:
        if id(leaf) not in cts:
            _set_at(fresh, path, None)
    return fresh


def _set_at(root: object, path: tuple[jax.tree_util.KeyEntry, ...], value: object) -> None:
    """Set the entry at JAX key `path` inside `root` (attributes, items) to `value`."""
    parent: tp.Any = root  # reached by reflection: an object or a container
    for key in path[:-1]:
        parent = _get_key(parent, key)
    last = path[-1]
    if isinstance(last, jax.tree_util.GetAttrKey):
        setattr(parent, last.name, value)
    else:
        parent[last.idx if isinstance(last, jax.tree_util.SequenceKey) else last.key] = value


def _get_key(x: tp.Any, key: jax.tree_util.KeyEntry) -> tp.Any:
    if isinstance(key, jax.tree_util.GetAttrKey):
        return getattr(x, key.name)
    if isinstance(key, jax.tree_util.SequenceKey):
        return x[key.idx]
    return x[key.key]


def _is_static(x: object) -> bool:
    """No arrays and no graph objects in `x`: it can stay a Python value."""
    from nnxfn.core.graph import is_array

    return all(
        not boundary.is_graph_object(leaf) and not is_array(leaf)
        for leaf in jax.tree_util.tree_leaves(x, is_leaf=boundary.is_graph_object)
    )


def _with_changed(exit_static: boundary.ExitStatic, changed: tuple, paths: tuple) -> boundary.ExitStatic:
    """`exit_static` emitting the input leaves `changed` (and nothing else)."""
    import dataclasses

    if exit_static.graphdef is None:
        return dataclasses.replace(exit_static, changed=changed)
    returned = tuple(p for p in exit_static.paths if p[0] == 1)  # leaves of returned objects
    return dataclasses.replace(
        exit_static, changed=changed, paths=tuple((0,) + paths[i] for i in changed) + returned
    )


def _returned_leaves(exit_static: boundary.ExitStatic, emitted: list) -> list:
    """The emitted values of the leaves of objects the function returned (created by it)."""
    if exit_static.graphdef is None:
        return []
    return [v for p, v in zip(exit_static.paths, emitted) if p[0] == 1]


def _returned_cotangents(
    entry: boundary.EntryRecord, exit_static: boundary.ExitStatic, state_g: list, returned_g: list
) -> list:
    """Cotangents of the objects in the output, shaped like them (a Module for a
    Module): an argument returned gets its state's cotangents, a new object its own."""
    if not exit_static.out_positions:
        return []
    leaves = {(0,) + p: g for p, g in zip(entry.static.paths, state_g)}
    leaves.update(zip((p for p in exit_static.paths if p[0] == 1), returned_g))
    assert exit_static.graphdef is not None  # objects were returned: the exit describes them
    _, out_nodes = core.unflatten_graph(exit_static.graphdef, leaves)
    return list(out_nodes)


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
    With `graph=False`/`graph_updates=False` (Flax's tree mode) `bwd` has Flax's
    tree-mode convention: `bwd(*nondiff, res, out_g[, updates_g=...])`, tangents
    shaped like the arguments (a Module for a Module), and only Variable values
    written by `fun`/`fwd` are committed."""
    simple = core_tm.skips_graph_updates(graph, graph_updates)  # Flax's tree-mode `bwd`
    if fun is None:
        return lambda f: CustomVjp(f, nondiff_argnums, simple=simple)
    return CustomVjp(fun, nondiff_argnums, simple=simple)
