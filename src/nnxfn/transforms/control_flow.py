"""`cond`, `switch`, `while_loop`, `fori_loop` for functions of Modules.

Every branch / iteration sees fresh objects built from the operands' state
and must leave their structure unchanged; all state of the operands is
threaded through (so any branch may write any Variable), and the final values
are committed to the caller's objects. With `graph=False`/`graph_updates=False`
(Flax's tree mode) `cond`/`switch` commit only Variable values and raise Flax's
tree-mode errors (see `transforms/treemode.py`), and the loops give their carry
back as Flax's tree mode does: new objects holding the caller's Variables.
"""

from __future__ import annotations

import typing as tp

import jax
from jax.typing import ArrayLike

from nnxfn.core import treemode as core_tm
from nnxfn.transforms import boundary
from nnxfn.transforms.common import run_inside, run_inside_with_output
from nnxfn.transforms.treemode import Rules, lifted, share_variables

_STRUCTURE = (
    "{name}: {what} changed the structure of its operands (added, removed or "
    "rebound an attribute). Inside control flow only values may change; create "
    "attributes before the {name} call."
)


def _branch_fn(entry: boundary.EntryRecord, fn: tp.Callable, name: str, cell: dict) -> tp.Callable:
    every = set(range(len(entry.values)))

    def run(values: list, others: list) -> tuple:
        exit_static, out_arrays, emitted = run_inside(fn, entry.static, values, others, name, every)
        if exit_static.changed is None:
            raise ValueError(_STRUCTURE.format(name=name, what="a branch"))
        if exit_static.graphdef is not None:
            raise ValueError(
                f"{name}: a branch returned a Module; return arrays from control flow "
                "and keep Modules as operands."
            )
        cell.setdefault("exits", []).append(exit_static)
        return out_arrays, emitted

    return run


def _finish(entry: boundary.EntryRecord, cell: dict, out_arrays: list, emitted: list) -> tp.Any:
    return boundary.commit(entry, cell["exits"][0], out_arrays, emitted)


@lifted(Rules("cond", fns=("true_fun", "false_fun"), operands=("operands",)))
def cond(
    pred: ArrayLike,
    true_fun: tp.Callable,
    false_fun: tp.Callable,
    *operands: tp.Any,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> tp.Any:
    """Like `jax.lax.cond`; Modules may be operands and be written by either branch."""
    entry = boundary.enter(operands, {})
    cell: dict = {}
    out_arrays, emitted = jax.lax.cond(
        pred,
        _branch_fn(entry, true_fun, "nnx.cond", cell),
        _branch_fn(entry, false_fun, "nnx.cond", cell),
        entry.values,
        entry.others,
    )
    return _finish(entry, cell, out_arrays, emitted)


@lifted(Rules("switch", fns=("branches",), operands=("operands",)))
def switch(
    index: ArrayLike,
    branches: tp.Sequence[tp.Callable],
    *operands: tp.Any,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> tp.Any:
    """Like `jax.lax.switch`; Modules may be operands and be written by any branch."""
    entry = boundary.enter(operands, {})
    cell: dict = {}
    fns = [_branch_fn(entry, b, "nnx.switch", cell) for b in branches]
    out_arrays, emitted = jax.lax.switch(index, fns, entry.values, entry.others)
    return _finish(entry, cell, out_arrays, emitted)


def _loop_step(entry: boundary.EntryRecord, fn: tp.Callable, name: str) -> tp.Callable:
    """(values, others) -> (values, others) for a body `val -> val`."""

    def step(values: list, others: list, *extra: object) -> tuple:
        def call(*args: object) -> tp.Any:
            return fn(*extra, args[0]) if extra else fn(args[0])

        (exit_static, out_arrays, emitted), out = run_inside_with_output(
            call, entry.static, values, others, name
        )
        again = boundary.enter((out,), {})
        if again.static.graphdef != entry.static.graphdef or len(again.others) != len(others):
            raise ValueError(
                f"{name}: the body must return a value with the same structure as "
                "its input (same Modules, same attributes, same array leaves)."
            )
        if exit_static.changed is None:  # e.g. a Variable replaced by a new one
            raise ValueError(_STRUCTURE.format(name=name, what="the body"))
        return again.values, again.others

    return step


def while_loop(
    cond_fun: tp.Callable,
    body_fun: tp.Callable,
    init_val: tp.Any,
    *,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> tp.Any:
    """Like `jax.lax.while_loop`; `init_val` may hold Modules, updated in place."""
    entry = boundary.enter((init_val,), {})
    step = _loop_step(entry, body_fun, "nnx.while_loop")

    def test(carry: tuple) -> tp.Any:
        _, out = run_inside_with_output(
            lambda v: cond_fun(v), entry.static, carry[0], carry[1], "nnx.while_loop"
        )
        return out

    values, others = jax.lax.while_loop(test, lambda c: step(c[0], c[1]), (entry.values, entry.others))
    return _write_back(entry, values, others, graph, graph_updates)


def fori_loop(
    lower: int,
    upper: int,
    body_fun: tp.Callable,
    init_val: tp.Any,
    *,
    unroll: int | bool | None = None,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> tp.Any:
    """Like `jax.lax.fori_loop` with `body_fun(i, val) -> val`; Modules updated in place."""
    entry = boundary.enter((init_val,), {})
    step = _loop_step(entry, body_fun, "nnx.fori_loop")
    kwargs = {} if unroll is None else {"unroll": unroll}
    values, others = jax.lax.fori_loop(
        lower, upper, lambda i, c: step(c[0], c[1], i), (entry.values, entry.others), **kwargs
    )
    return _write_back(entry, values, others, graph, graph_updates)


def _write_back(
    entry: boundary.EntryRecord, values: list, others: list, graph: bool | None, graph_updates: bool | None
) -> tp.Any:
    """Commit the loop's final values; the caller's objects come back (in Flax's tree
    mode, new objects holding the caller's Variables, as Flax returns the carry)."""
    boundary.commit_all(entry, values)
    (val,), _ = boundary.assemble(
        entry.static.treedef,
        entry.static.node_positions + tuple(p for p, _ in entry.static.static_leaves),
        list(entry.nodes) + [v for _, v in entry.static.static_leaves],
        others,
    )
    return share_variables(val) if core_tm.skips_graph_updates(graph, graph_updates) else val
