"""`grad`, `value_and_grad`, `vjp`, `jvp`, `custom_vjp`, `remat` on the boundary.

Module arguments are differentiated with respect to their `Param` leaves by
default (`DiffState(argnum, filter)` picks others); their gradients come back
as a `State` with the module's paths. Writes made during the forward pass
(BatchNorm statistics, Rngs counters) are committed to the caller's objects.

With `graph=False` or `graph_updates=False` (Flax's tree mode, also from
`nnx.set_graph_mode(False)`/`nnx.set_graph_updates(False)`/`NNX_GRAPH_MODE=false`,
decided when the transform is made) a Module argument is a plain pytree, as in
Flax: every leaf is differentiated and gradients, cotangents and tangents have
the argument's shape (a `Linear` of gradient Variables for a `Linear`), built
from the same entry as the graph-mode States; only Variable values written
inside are committed (see `transforms/treemode.py`).
"""

from __future__ import annotations

import functools
import typing as tp

import jax

from nnxfn import core
from nnxfn.core import treemode as core_tm
from nnxfn.core.variable_like import VariableLike
from nnxfn.transforms import boundary
from nnxfn.transforms.boundary import Leaf, is_graph_object
from nnxfn.transforms.common import (
    DiffState as DiffState,
    MethodWrapper,
    arg_of_leaves,
    body_fn,
    check_not_bound,
    in_scan_body,
    variable_like,
    leaf_args,
    run_inside_with_output,
)
from nnxfn.transforms.custom import CustomVjp as CustomVjp, custom_vjp as custom_vjp  # Flax's layout
from nnxfn.transforms.treemode import Rules, lifted


#: `argnums` of grad-like transforms: argument numbers, or `DiffState(argnum, filter)`s
DiffSpecs = int | DiffState | tp.Sequence[int | DiffState]


def _diff_specs(argnums: DiffSpecs) -> tuple[DiffState, ...]:
    items = argnums if isinstance(argnums, (tuple, list)) else (argnums,)
    return tuple(a if isinstance(a, DiffState) else DiffState(a) for a in items)


def _check_argnums(argnums: object, name: str) -> None:
    items = argnums if isinstance(argnums, (tuple, list)) else (argnums,)
    for a in items:
        if isinstance(a, DiffState) or (isinstance(a, int) and not isinstance(a, bool)):
            continue
        if is_graph_object(a):
            raise ValueError(
                f"{name}: Graph nodes are not allowed as prefixes: argnums holds a "
                f"{type(a).__name__}. Use an int, or `nnx.DiffState(argnum, filter)` to pick "
                "which leaves of a Module argument are differentiated."
            )
        raise TypeError(f"{name}: argnums entries must be ints or nnx.DiffState, got {a!r}.")


class _Selection:
    """Which state/other leaves of an EntryRecord are differentiated, per argument.

    tree: Flax's tree mode / `graph_updates=False`, where a differentiated
    argument is a plain pytree: every one of its leaves is differentiated
    (`DiffState` filters are refused there) and `shaped` gives the results."""

    def __init__(
        self,
        entry: boundary.EntryRecord,
        args: tuple,
        kwargs: dict,
        specs: tuple[DiffState, ...],
        tree: bool = False,
    ):
        owners = arg_of_leaves(args, kwargs)
        state_owner, other_owner = leaf_args(entry, owners)
        preds = {s.argnum: core.to_predicate(s.filter) for s in specs}
        # A Variable given directly (not inside a Module) is differentiated whatever the
        # filter, as in Flax; inside graph objects the filter (default `Param`) selects.
        self.state = [
            i
            for i, (o, path, leaf) in enumerate(zip(state_owner, entry.static.paths, entry.live))
            if o in preds and (tree or len(path) == 1 or preds[o](path[1:], leaf))
        ]
        self.tree = tree
        self.other = [i for i, o in enumerate(other_owner) if o in preds]
        self.state_owner, self.other_owner = state_owner, other_owner
        self.entry, self.args, self.kwargs, self.specs = entry, args, kwargs, specs

    def primals(self) -> tuple[list, list]:
        e = self.entry
        return [e.values[i] for i in self.state], [e.others[i] for i in self.other]

    def substitute(self, state_vals: tp.Sequence, other_vals: tp.Sequence) -> tuple[list, list]:
        values, others = list(self.entry.values), list(self.entry.others)
        for i, v in zip(self.state, state_vals):
            values[i] = v
        for i, v in zip(self.other, other_vals):
            others[i] = v
        return values, others

    def structure(self, state_vals: tp.Sequence, other_vals: tp.Sequence) -> tp.Any:
        """Per differentiated argument: States for graph objects, arrays elsewhere
        (in tree mode: the argument's own shape, see `shaped`)."""
        if self.tree:
            return self.shaped(state_vals, other_vals)
        by_state = dict(zip(self.state, state_vals))
        by_other = dict(zip(self.other, other_vals))
        e = self.entry
        out = []
        seen: set[int] = set()
        for spec in self.specs:
            arg = self.args[spec.argnum]
            leaves, treedef = jax.tree_util.tree_flatten(arg, is_leaf=is_graph_object)
            node_ids: dict[int, int] = {}
            for k, n in enumerate(e.nodes):  # the first occurrence holds the leaves
                node_ids.setdefault(id(n), k)
            other_iter = iter(i for i, o in enumerate(self.other_owner) if o == spec.argnum)
            new_leaves: list[Leaf] = []  # a State, Variable or None per leaf
            for leaf in leaves:
                if isinstance(leaf, VariableLike):  # a bare Variable argument: its gradient
                    k = node_ids[id(leaf)]  # is a Variable of the same type
                    i = next((i for i, p in enumerate(e.static.paths) if p == (k,)), None)
                    if i is None or id(leaf) in seen:  # seen before: its gradient is there
                        new_leaves.append(core.State({}))
                    else:
                        new_leaves.append(variable_like(e.live[i], by_state[i]) if i in by_state else None)
                    seen.add(id(leaf))
                elif is_graph_object(leaf) and id(leaf) in seen:  # its gradient is at its first place
                    new_leaves.append(core.State({}))
                elif is_graph_object(leaf):
                    seen.add(id(leaf))
                    k = node_ids[id(leaf)]
                    pairs = [
                        (e.static.paths[i][1:], variable_like(e.live[i], by_state[i]))
                        for i in range(len(e.live))
                        if e.static.paths[i][0] == k and i in by_state
                    ]
                    new_leaves.append(core.State.from_flat_path(pairs))
                else:
                    i = next(other_iter)
                    new_leaves.append(by_other.get(i))
            out.append(jax.tree_util.tree_unflatten(treedef, new_leaves))
        return out

    def shaped(self, state_vals: tp.Sequence, other_vals: tp.Sequence) -> list:
        """Per differentiated argument, what `jax.grad` of it as a pytree gives (Flax's
        tree mode): the argument's structure with each graph object rebuilt from the
        arguments' GraphDef holding the gradients (a `Linear` of gradient Variables for
        a `Linear`, a Variable for a Variable; a Variable reached twice is one object,
        at both paths), and arrays elsewhere."""
        e = self.entry
        values = list(e.values)
        for i, v in zip(self.state, state_vals):
            values[i] = v
        made = core.unflatten_graph(e.static.graphdef, dict(zip(e.static.paths, values)))
        first: dict[int, int] = {}
        for k, n in enumerate(e.nodes):
            first.setdefault(id(n), k)
        by_other = dict(zip(self.other, other_vals))
        out = []
        for spec in self.specs:
            leaves, treedef = jax.tree_util.tree_flatten(self.args[spec.argnum], is_leaf=is_graph_object)
            others = iter(i for i, o in enumerate(self.other_owner) if o == spec.argnum)
            new_leaves = []
            for leaf in leaves:
                if is_graph_object(leaf):
                    new_leaves.append(made[first[id(leaf)]])
                elif boundary._plain(leaf) is None:
                    new_leaves.append(by_other.get(next(others)))
                else:  # a static leaf has no gradient
                    new_leaves.append(None)
            out.append(jax.tree_util.tree_unflatten(treedef, new_leaves))
        return out

    def check_dtypes(self, name: str, allow_int: bool, holomorphic: bool) -> None:
        """Tree mode differentiates every leaf of a Module argument: say which one JAX
        would refuse (an int counter, an RNG key), with its path and the fixes."""
        if allow_int or holomorphic:
            return
        for i in self.state:
            dtype = getattr(self.entry.values[i], "dtype", None)
            if dtype is not None and not jax.numpy.issubdtype(dtype, jax.numpy.inexact):
                raise TypeError(_int_leaf(name, self._where(i), dtype))

    def _where(self, i: int) -> str:
        """`args[0].count`: where state leaf `i` sits in the call's arguments."""
        path = self.entry.static.paths[i]
        pairs, _ = jax.tree_util.tree_flatten_with_path((self.args, self.kwargs), is_leaf=is_graph_object)
        keypath = pairs[self.entry.static.node_positions[path[0]]][0]
        root = ("args" if keypath[0].idx == 0 else "kwargs") + jax.tree_util.keystr(keypath[1:])
        return core.errors.path_str(path[1:], root)


def _int_leaf(name: str, where: str, dtype: object) -> str:
    return (
        f"{name} with graph=False or graph_updates=False: cannot differentiate {where} "
        f"(dtype {dtype}). In these modes a Module argument is a plain pytree, so every "
        "leaf of it is differentiated, and JAX differentiates only float and complex "
        "arrays. Fix it in one of these ways:\n"
        f"  1. Pass allow_int=True: that leaf then gets a float0 (empty) gradient.\n"
        "  2. Differentiate only the float state: `graphdef, params, rest = "
        "nnx.split(model, nnx.Param, ...)` and pass `params` as the differentiated argument "
        "(merge them inside).\n"
        f"  3. Use graph mode, which differentiates the `nnx.Param`s only: "
        f"`{name}(..., graph=True, graph_updates=True)` (the default)."
    )


def _single(specs_given: DiffSpecs, results: list[object]) -> object:
    return results[0] if not isinstance(specs_given, (tuple, list)) else tuple(results)


def _primal_fn(f: tp.Callable, sel: "_Selection", has_aux: bool, name: str, cell: dict) -> tp.Callable:
    """`(diff state values, diff other values) -> (primal, (out arrays, emitted))`:
    `f` run on fresh objects, its exit description stored in `cell['exit']`."""
    entry = sel.entry

    def inner(state_vals: list, other_vals: list) -> tuple:
        values, others = sel.substitute(state_vals, other_vals)
        (exit_static, out_arrays, emitted), out = run_inside_with_output(
            f, entry.static, values, others, name
        )
        cell["exit"] = exit_static
        return (out[0] if has_aux else out), (out_arrays, emitted)

    return inner


class _GradWrapped(MethodWrapper):
    """`nnx.grad(f)` / `nnx.value_and_grad(f)` (`return_value`): call it like `f`."""

    def __init__(
        self,
        fn: tp.Callable,
        *,
        argnums: DiffSpecs,
        has_aux: bool,
        holomorphic: bool,
        allow_int: bool,
        return_value: bool,
        name: str,
        tree: bool,
    ):
        check_not_bound(fn, name)
        _check_argnums(argnums, name)
        functools.update_wrapper(self, fn)
        self.fn, self.argnums, self.has_aux = fn, argnums, has_aux
        self.holomorphic, self.allow_int = holomorphic, allow_int
        self.return_value, self.name, self.tree = return_value, name, tree

    def __call__(self, *args: object, **kwargs: object) -> tp.Any:
        entry = boundary.enter(args, kwargs)
        sel = _Selection(entry, args, kwargs, _diff_specs(self.argnums), self.tree)
        if self.tree:
            sel.check_dtypes(self.name, self.allow_int, self.holomorphic)
        cell: dict = {}
        inner = _primal_fn(self.fn, sel, self.has_aux, self.name, cell)

        (_, (out_arrays, emitted)), (g_state, g_other) = jax.value_and_grad(
            inner,
            argnums=(0, 1),
            has_aux=True,
            holomorphic=self.holomorphic,
            allow_int=self.allow_int,
        )(*sel.primals())
        out = boundary.commit(entry, cell["exit"], out_arrays, emitted)
        grads = _single(self.argnums, sel.structure(g_state, g_other))
        if self.return_value:
            return out, grads
        return (grads, out[1]) if self.has_aux else grads


@lifted(Rules("value_and_grad", prefixes=("argnums",), diff="argnums"))
def value_and_grad(
    f: tp.Callable | None = None,
    argnums: DiffSpecs = 0,
    has_aux: bool = False,
    *,
    holomorphic: bool = False,
    allow_int: bool = False,
    reduce_axes: tp.Sequence[tp.Hashable] = (),
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> tp.Any:
    """Like `jax.value_and_grad`; module arguments are differentiated w.r.t. their
    `Param`s (or `DiffState(argnum, filter)`), gradients returned as `State`s.

    With `graph=False` or `graph_updates=False` (Flax's tree mode, also set by
    `nnx.set_graph_mode(False)`/`nnx.set_graph_updates(False)`), as in Flax a
    Module argument is a plain pytree: all its leaves are differentiated and its
    gradient has its shape (a `Linear` holding gradient Variables for a `Linear`);
    only Variable values written inside reach the caller."""
    _check_reduce_axes(reduce_axes, "nnx.value_and_grad")
    if f is None:
        return lambda fn: value_and_grad(
            fn,
            argnums,
            has_aux,
            holomorphic=holomorphic,
            allow_int=allow_int,
            graph=graph,
            graph_updates=graph_updates,
        )
    tree = core_tm.skips_graph_updates(graph, graph_updates)
    return _GradWrapped(
        f,
        argnums=argnums,
        has_aux=has_aux,
        holomorphic=holomorphic,
        allow_int=allow_int,
        return_value=True,
        name="nnx.value_and_grad",
        tree=tree,
    )


@lifted(Rules("grad", prefixes=("argnums",), diff="argnums"))
def grad(
    f: tp.Callable | None = None,
    argnums: DiffSpecs = 0,
    has_aux: bool = False,
    *,
    holomorphic: bool = False,
    allow_int: bool = False,
    reduce_axes: tp.Sequence[tp.Hashable] = (),
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> tp.Any:
    """Like `jax.grad`; see `value_and_grad` (also for `graph=False`/`graph_updates=False`)."""
    _check_reduce_axes(reduce_axes, "nnx.grad")
    if f is None:
        return lambda fn: grad(
            fn,
            argnums,
            has_aux,
            holomorphic=holomorphic,
            allow_int=allow_int,
            graph=graph,
            graph_updates=graph_updates,
        )
    tree = core_tm.skips_graph_updates(graph, graph_updates)
    return _GradWrapped(
        f,
        argnums=argnums,
        has_aux=has_aux,
        holomorphic=holomorphic,
        allow_int=allow_int,
        return_value=False,
        name="nnx.grad",
        tree=tree,
    )


def _check_reduce_axes(reduce_axes: tp.Sequence[tp.Hashable], name: str) -> None:
    if reduce_axes:  # removed from JAX; Flax rejects it the same way
        raise NotImplementedError(
            f"{name}: reduce_axes is no longer supported by JAX; sum the gradients "
            "over the axis yourself (e.g. `jax.lax.psum`)."
        )


@lifted(Rules("vjp", operands=("primals",)))
def vjp(
    f: tp.Callable | None = None,
    *primals: object,
    has_aux: bool = False,
    reduce_axes: tp.Sequence[tp.Hashable] = (),
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> tp.Any:
    """Like `jax.vjp`; cotangents for module primals are States of their Params.
    With `graph=False`/`graph_updates=False` (Flax's tree mode) every leaf of a
    primal is differentiated and its cotangent has the primal's shape (a Module
    for a Module), as in Flax.
    Without primals (or without `f`) returns a partial waiting for them."""
    _check_reduce_axes(reduce_axes, "nnx.vjp")
    if f is None or not primals:
        bound = () if f is None else (f,)
        return functools.partial(vjp, *bound, has_aux=has_aux, graph=graph, graph_updates=graph_updates)
    check_not_bound(f, "nnx.vjp")
    entry = boundary.enter(primals, {})
    tree = core_tm.skips_graph_updates(graph, graph_updates)
    sel = _Selection(entry, primals, {}, _diff_specs(tuple(range(len(primals)))), tree)
    cell: dict = {}

    inner = _primal_fn(f, sel, has_aux, "nnx.vjp", cell)

    primal_out, pullback, (out_arrays, emitted) = jax.vjp(inner, *sel.primals(), has_aux=True)
    out = boundary.commit(entry, cell["exit"], out_arrays, emitted)

    def vjp_fn(cotangent: object) -> tuple[object, ...]:
        g_state, g_other = pullback(cotangent)
        return tuple(sel.structure(g_state, g_other))

    if has_aux:
        return primal_out, vjp_fn, out[1]
    return primal_out, vjp_fn


@lifted(Rules("jvp", operands=("primals",)))
def jvp(
    f: tp.Callable | None = None,
    primals: tp.Sequence | None = None,
    tangents: tp.Sequence | None = None,
    *,
    has_aux: bool = False,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> tp.Any:
    """Like `jax.jvp`; tangents for module primals are States of their Params.
    With `graph=False`/`graph_updates=False` (Flax's tree mode) every leaf of a
    primal has a tangent, given shaped like the primal (e.g. `jax.tree.map(
    jnp.zeros_like, model)`), as in Flax.
    Without primals/tangents (or without `f`) returns a partial waiting for them."""
    if f is None or primals is None or tangents is None:
        bound = () if f is None else (f,)
        return functools.partial(jvp, *bound, has_aux=has_aux, graph=graph, graph_updates=graph_updates)
    check_not_bound(f, "nnx.jvp")
    primals = tuple(primals)
    entry = boundary.enter(primals, {})
    tree = core_tm.skips_graph_updates(graph, graph_updates)
    sel = _Selection(entry, primals, {}, _diff_specs(tuple(range(len(primals)))), tree)
    t_state = _tangent_values(sel, tangents)
    t_other = _tangent_others(sel, tangents)
    cell: dict = {}

    inner = _primal_fn(f, sel, has_aux, "nnx.jvp", cell)

    primal_out, tangent_out, (out_arrays, emitted) = jax.jvp(
        inner, sel.primals(), (t_state, t_other), has_aux=True
    )
    out = boundary.commit(entry, cell["exit"], out_arrays, emitted)
    if has_aux:
        return primal_out, tangent_out, out[1]
    return primal_out, tangent_out


def _tangent_leaves(primal: object, tangent: object) -> list[object]:
    """Tangent leaves paired with the primal's leaves (a State or Module per graph object)."""
    return jax.tree_util.tree_leaves(
        tangent, is_leaf=lambda x: isinstance(x, core.State) or is_graph_object(x)
    )


def _tangent_others(sel: _Selection, tangents: tp.Sequence) -> list:
    """Tangents of the non-graph (array) leaves of the primals, in `entry.others` order."""
    out = []
    for primal, tangent in zip(sel.args, tangents):
        p_leaves = jax.tree_util.tree_leaves(primal, is_leaf=is_graph_object)
        t_leaves = _tangent_leaves(primal, tangent)
        for p, t in zip(p_leaves, t_leaves):
            if not is_graph_object(p) and boundary._plain(p) is None:
                out.append(t)
    return out


def _tangent_values(sel: _Selection, tangents: tp.Sequence) -> list:
    """Tangent values aligned with the selected state leaves."""
    e = sel.entry
    flat_by_node: dict[int, dict] = {}
    node_ids: dict[int, int] = {}
    for k, n in enumerate(e.nodes):  # the first occurrence holds the leaves
        node_ids.setdefault(id(n), k)
    for primal, tangent in zip(sel.args, tangents):
        p_leaves = jax.tree_util.tree_leaves(primal, is_leaf=is_graph_object)
        t_leaves = _tangent_leaves(primal, tangent)
        for p, t in zip(p_leaves, t_leaves):
            if isinstance(p, VariableLike):
                flat_by_node[node_ids[id(p)]] = {(): t}
            elif is_graph_object(p):
                flat = t.flat_dict() if isinstance(t, core.State) else dict(core.state(t).flat_state())
                flat_by_node[node_ids[id(p)]] = flat
    out = []
    for i in sel.state:
        path = e.static.paths[i]
        t = flat_by_node[path[0]].get(path[1:], _NO_TANGENT)
        if t is _NO_TANGENT:
            raise ValueError(
                f"nnx.jvp: no tangent for {sel._where(i)}: give the tangent of a Module "
                "primal shaped like it (e.g. `jax.tree.map(jnp.zeros_like, model)`) or as a "
                "State with every differentiated path"
                + (" (with graph=False/graph_updates=False that is every leaf)." if sel.tree else ".")
            )
        out.append(boundary.raw(t))
    return out


_NO_TANGENT = object()


@lifted(Rules("remat"))
def remat(
    f: tp.Callable | None = None,
    *,
    prevent_cse: bool | None = None,
    static_argnums: int | tuple[int, ...] = (),
    policy: tp.Callable | None = None,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> tp.Any:
    """Like `jax.checkpoint`: recompute `f`'s activations in the backward pass.

    `prevent_cse=None` (the default) is `True`, except when `f` is called directly in an
    `nnx.scan` body (no grad, vmap or jit in between): there the scan already keeps the
    forward pass and the recomputation in different loops, the case where `jax.checkpoint`'s
    documentation says CSE prevention is unneeded, so it is `False` and XLA may optimise
    across the recomputed block. The numbers are the same either way; pass a bool to choose.
    """
    if f is None:
        return lambda fn: remat(
            fn,
            prevent_cse=prevent_cse,
            static_argnums=static_argnums,
            policy=policy,
            graph=graph,
            graph_updates=graph_updates,
        )
    check_not_bound(f, "nnx.remat")
    static_nums = (static_argnums,) if isinstance(static_argnums, int) else tuple(static_argnums)

    @functools.wraps(f)
    def wrapper(*args: object, **kwargs: object) -> tp.Any:
        statics = {i: args[i] for i in static_nums}
        dyn = tuple(a for i, a in enumerate(args) if i not in statics)
        entry = boundary.enter(dyn, kwargs)
        cell: dict = {}

        def call(*dargs: tp.Any, **kw: tp.Any) -> tp.Any:
            full = list(dargs)
            for i in sorted(statics):
                full.insert(i, statics[i])
            return f(*full, **kw)

        inner = body_fn(call, entry.static, "nnx.remat", cell)

        cse = not in_scan_body() if prevent_cse is None else prevent_cse
        out_arrays, emitted = jax.checkpoint(inner, prevent_cse=cse, policy=policy)(
            entry.values, entry.others
        )
        return boundary.commit(entry, cell["exit"], out_arrays, emitted)

    return wrapper


checkpoint = remat
