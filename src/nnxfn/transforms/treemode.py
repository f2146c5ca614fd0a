"""Flax's tree mode (`graph=False`) and `graph_updates=False` for transforms.

In those modes Flax treats the arguments as plain pytrees: it rejects some
input (a Variable passed twice or returned as an output, "Variable aliasing";
`StateAxes` / `StateSharding` / `DiffState` prefixes; graph objects as
prefixes in graph mode), and carries only Variable values out of the
transform (an attribute set or swapped inside is dropped). `@lifted(...)` on
a transform does both when the caller asked for such a mode: it checks the
prefixes when the transform is made, and wraps the function so its arguments
and outputs are checked, and their structure put back (`Structure`), inside
the transform, on the objects the function receives (so `nnx.jit` does it
only while tracing). Results that differ in shape (gradients shaped like the
Module) are made by the transforms themselves (`autodiff.py`, `custom.py`).
With the default flags `lifted` calls the transform untouched: two dict
lookups and a read of the mode switches per *transform construction* (per
call for the transforms that run at once, such as `cond`), and nothing per
call of a transformed function.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import operator
import typing as tp

import jax

from nnxfn import core
from nnxfn.core import treemode as core_tm
from nnxfn.core.modes import set_graph_mode, set_graph_updates
from nnxfn.core.trees import TreeState
from nnxfn.transforms.boundary import is_graph_object
from nnxfn.transforms.common import Carry, DiffState, FilterMap, check_not_bound

F = tp.TypeVar("F", bound=tp.Callable[..., tp.Any])


# -- messages -------------------------------------------------------------------------------
def _fix(name: str) -> str:
    return (
        "Fix it in one of these ways:\n"
        "  1. Pass (and return) each Variable once; where you need a second one, make it "
        "with `nnx.clone(...)`.\n"
        f"  2. Use graph mode with graph updates, which keeps the sharing: "
        f"`nnx.{name}(..., graph=True, graph_updates=True)` (the default)."
    )


def aliasing(name: str, mode: str, obj: object, first: str, second: str) -> str:
    return (
        f"nnx.{name} with {mode}: Duplicate {type(obj).__name__} found at paths:\n"
        f"  - {first}\n  - {second}\n"
        f"nnx.{name} with graph=False or graph_updates=False does not support Variable "
        "aliasing (the same Variable passed twice, returned twice, or an input Variable "
        "returned as an output): the inputs and outputs are plain pytrees, so each path "
        "would hold its own copy. " + _fix(name)
    )


def inconsistent_diff(name: str, obj: object, diff_path: str, other_path: str) -> str:
    return (
        f"nnx.{name}: Inconsistent aliasing detected. The following nodes have different "
        f"prefixes:\nNode: {type(obj).__name__}\n  {diff_path}: differentiated (in argnums)\n"
        f"  {other_path}: not differentiated\n"
        "It is one Variable, so it cannot be both. Pass it only in the differentiated "
        "argument, or pass a copy (`nnx.clone(...)`) in the other one."
    )


def mapping_prefix(name: str, prefix_name: str, obj: object) -> str:
    kind = type(obj).__name__
    return (
        f"nnx.{name}: `{prefix_name}` cannot contain `{kind}` objects when `graph=False` or "
        f"`graph_updates=False`: in those modes each argument is a plain pytree, so "
        f"`{prefix_name}` holds plain entries (one per argument, or a pytree of them shaped "
        f"like it). Remove the `{kind}`, or keep it and use graph mode with graph updates: "
        f"`nnx.{name}(..., graph=True, graph_updates=True)` (the default)."
    )


def graph_node_prefix(name: str, prefix_name: str, obj: object, where: str) -> str:
    at = f" at {where}" if where != prefix_name else ""
    return (
        f"nnx.{name}: Found graph node of type {type(obj).__name__} in `{prefix_name}`{at}. "
        "Graph nodes are not allowed as prefixes when graph=True. Give one "
        f"prefix for the whole object, per-filter prefixes (e.g. `nnx.StateAxes`), or "
        f"`nnx.prefix(obj, ..., graph=True)`; or pass graph=False to nnx.{name}."
    )


def tree_state_prefix(name: str, prefix_name: str, where: str) -> str:
    return (
        f"nnx.{name}: Found a `TreeState` (what `nnx.prefix(..., graph=True)` returns) in "
        f"`{prefix_name}` (at {where}) with graph=False. In tree mode make the prefix with "
        "`nnx.prefix(obj, ..., graph=False)`, or drop graph=False."
    )


# -- wrap-time checks ------------------------------------------------------------------------
def _is_prefix_leaf(x: object) -> bool:
    return x is None or is_graph_object(x) or isinstance(x, (FilterMap, TreeState)) or _is_diff_state(x)


def _is_diff_state(x: object) -> bool:

    return isinstance(x, DiffState)


def check_prefix(name: str, prefix_name: str, value: object, graph: bool | None, skips_updates: bool) -> None:
    """Flax's checks of a prefix argument (`in_axes`, `in_shardings`, `argnums`, ...)."""
    tree = core_tm.is_tree_mode(graph)
    pairs, _ = jax.tree_util.tree_flatten_with_path(value, is_leaf=_is_prefix_leaf)
    for keypath, leaf in pairs:
        where = prefix_name + jax.tree_util.keystr(keypath)
        if (isinstance(leaf, FilterMap) or _is_diff_state(leaf)) and skips_updates:
            raise ValueError(mapping_prefix(name, prefix_name, leaf))
        if is_graph_object(leaf) and graph is True:
            raise ValueError(graph_node_prefix(name, prefix_name, leaf, where))
        if isinstance(leaf, TreeState) and tree:
            raise ValueError(tree_state_prefix(name, prefix_name, where))


# -- call-time checks (inside the transform) ---------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Rules:
    """How Flax checks one transform in tree mode / without graph updates.

    fns: the parameters holding the function(s) (a sequence for `switch`);
    prefixes: parameters checked as prefixes at wrap time;
    operands: parameters holding the call's arguments, for transforms that run
      at once (checked before anything runs);
    unique: "tree" if shared input Variables are an error only in tree mode,
      "always" if also with graph_updates=False;
    diff: the `argnums` parameter of `grad`-like transforms;
    carry: whether `in_axes`/`out_axes` may mark a carry (`scan`)."""

    name: str
    fns: tuple[str, ...] = ("f",)
    prefixes: tuple[str, ...] = ()
    operands: tuple[str, ...] = ()
    unique: str = "tree"
    diff: str | None = None
    carry: bool = False


def _arg_roots(args: tuple, kwargs: dict, label: str = "args") -> list[tuple[str, tp.Any]]:
    roots = [(f"{label}[{i}]", a) for i, a in enumerate(args)]
    roots += [(f"kwargs[{k!r}]", v) for k, v in kwargs.items()]
    return roots


class _Check:
    """The per-call checks of one transformed function, for the mode asked for."""

    def __init__(
        self, rules: Rules, graph: bool | None, graph_updates: bool | None, bound: inspect.BoundArguments
    ):
        self.rules = rules
        self.tree = core_tm.is_tree_mode(graph)
        self.unique = self.tree or rules.unique == "always"
        self.mode = core_tm.mode_words(graph, graph_updates)
        self.diff = _as_ints(_argument(bound, rules.diff)) if rules.diff else None
        self.carry_in = self.carry_out = None
        if rules.carry:
            self.carry_in = _carry_index(_argument(bound, "in_axes"))
            self.carry_out = _carry_index(_argument(bound, "out_axes"))

    def _dup(self, obj: object, a: str, b: str) -> str:
        return aliasing(self.rules.name, self.mode, obj, a, b)

    def _walk(self, roots: list, unique: bool) -> dict:
        """The Variables under `roots`; in tree mode Flax's tree-mode input errors raise,
        and with `unique` a Variable reached twice does."""
        return core_tm.find_ref_leaves(
            roots, self.rules.name, tree=self.tree, unique=unique, on_duplicate=self._dup
        )

    def inputs(self, roots: list) -> dict:
        """The Variables of the arguments (raising on Flax's input errors)."""
        found = self._walk(roots, self.unique)
        if self.diff is not None and not self.tree:
            self._check_diff(roots)
        return found

    def _check_diff(self, roots: list) -> None:
        assert self.diff is not None  # called only for grad-like transforms
        n_pos = sum(1 for name, _ in roots if name.startswith("args["))
        diff = {i if i >= 0 else i + n_pos for i in self.diff}
        in_diff = self._walk([r for i, r in enumerate(roots) if i in diff], unique=False)
        rest = self._walk([r for i, r in enumerate(roots) if i not in diff], unique=False)
        for key, found in rest.items():
            if key in in_diff:
                raise ValueError(inconsistent_diff(self.rules.name, found.obj, in_diff[key].path, found.path))

    def outputs(self, out: object, inputs: dict, carry_ids: set[int] | None = None) -> None:
        """Raise if the output holds an input Variable (or, in tree mode, one twice);
        with a carry, only the carry output may hold the carry input's Variables."""
        if self.carry_out is None or carry_ids is None:
            self._no_overlap([("out", out)], inputs)
            return
        carry_roots, ys_roots = _split_carry(out, self.carry_out)
        non_carry = {k: v for k, v in inputs.items() if k not in carry_ids}
        found_carry = self._no_overlap(carry_roots, non_carry)
        self._no_overlap(ys_roots, {**found_carry, **inputs})

    def _no_overlap(self, roots: list, inputs: dict) -> dict:
        found = self._walk(roots, unique=self.tree)
        for key, f in found.items():
            if key in inputs:
                raise ValueError(self._dup(f.obj, inputs[key].path, f.path))
        return found

    def wrap(self, fn: tp.Callable) -> tp.Callable:
        @functools.wraps(fn)
        def checked(*args: object, **kwargs: object) -> tp.Any:
            roots = _arg_roots(args, kwargs)
            carry_ids = None
            if self.carry_in is not None and roots:
                carry_roots = [roots[0] if isinstance(self.carry_in, str) else roots[self.carry_in]]
                carry_ids = set(self._walk(carry_roots, unique=False))
            inputs = self.inputs(roots)
            before = Structure(args, kwargs)
            out = fn(*args, **kwargs)
            self.outputs(out, inputs, carry_ids)
            before.restore()
            return out

        return checked


class Structure:
    """The structure of the graph objects in some arguments, to put back after a call.

    Flax's tree mode and `graph_updates=False` carry only Variable values out of a
    transform: an attribute set, deleted or swapped inside is dropped (Flax
    hands the function copies and reads back only the Variables it was given).
    The engine commits whatever the function's objects hold when it returns, so
    `restore` puts their structure back as it was (the same objects at the same
    places, the raw array attributes as they were) while every Variable keeps the
    value written to it. Checked by one walk; nothing is written if nothing moved.
    """

    __slots__ = ("nodes", "graphdef", "objects", "leaves")

    def __init__(self, args: tuple, kwargs: dict):
        self.nodes = [
            x
            for x in jax.tree_util.tree_leaves((args, kwargs), is_leaf=is_graph_object)
            if is_graph_object(x)
        ]
        self.objects: list = []
        self.graphdef, pairs = core.flatten_graph(self.nodes, copy=False, objects=self.objects)
        self.leaves = dict(pairs)

    def restore(self) -> None:
        objects: list = []
        graphdef, _ = core.flatten_graph(self.nodes, copy=False, objects=objects)
        if graphdef == self.graphdef and len(objects) == len(self.objects):
            if all(map(operator.is_, objects, self.objects)):
                return
        # Variables are given as themselves: a reused Variable keeps its value.
        core.unflatten_graph(self.graphdef, self.leaves, reuse=dict(enumerate(self.objects)))


def _argument(bound: inspect.BoundArguments, name: str) -> tp.Any:
    """The value of parameter `name` in the call: given or default."""
    if name in bound.arguments:
        return bound.arguments[name]
    return bound.signature.parameters[name].default


def _as_ints(argnums: object) -> tuple[int, ...]:
    items = argnums if isinstance(argnums, (tuple, list)) else (argnums,)
    return tuple(a for a in items if isinstance(a, int))


def _carry_index(axes: object) -> int | str | None:
    if axes is Carry:
        return "all"
    if isinstance(axes, tuple):
        for i, a in enumerate(axes):
            if a is Carry:
                return i
    return None


def _split_carry(out: object, index: int | str) -> tuple[list, list]:
    """(carry roots, other output roots) of a scan body's output, labelled as the user sees them."""
    if index == "all":
        return [("out", out)], []
    if isinstance(out, tuple) and isinstance(index, int) and index < len(out):
        roots = [(f"out[{j}]", x) for j, x in enumerate(out)]
        return [roots[index]], roots[:index] + roots[index + 1 :]
    return [], [("out", out)]


# -- the decorator ---------------------------------------------------------------------------
def _defaults() -> bool:
    return set_graph_mode.current_value() and set_graph_updates.current_value()


def lifted(rules: Rules) -> tp.Callable[[F], F]:
    """Give a transform Flax's tree-mode / graph_updates=False errors (module docstring)."""

    def deco(transform: F) -> F:
        sig = inspect.signature(transform)
        flags_by_position = any(
            sig.parameters[p].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
            for p in ("graph", "graph_updates")
            if p in sig.parameters
        )

        @functools.wraps(transform)
        def wrapper(*args: object, **kwargs: object) -> tp.Any:
            if (
                "graph" not in kwargs
                and "graph_updates" not in kwargs
                and not flags_by_position
                and _defaults()
            ):
                return transform(*args, **kwargs)
            bound = sig.bind(*args, **kwargs)
            graph = bound.arguments.get("graph")
            graph_updates = bound.arguments.get("graph_updates")
            return _apply(rules, transform, bound, graph, graph_updates, wrapper)

        return tp.cast(F, wrapper)

    return deco


def _apply(
    rules: Rules,
    transform: tp.Callable,
    bound: inspect.BoundArguments,
    graph: bool | None,
    graph_updates: bool | None,
    again: tp.Callable,
) -> tp.Any:
    if rules.name == "make_jaxpr" and graph_updates is True:
        raise ValueError(
            "nnx.make_jaxpr does not support graph_updates=True. nnxfn's make_jaxpr never "
            "writes updates back; drop graph_updates=True (or pass graph_updates=False)."
        )
    skips = core_tm.skips_graph_updates(graph, graph_updates)
    for p in rules.prefixes:
        if p in bound.arguments:
            check_prefix(rules.name, p, bound.arguments[p], graph, skips)
    if not skips:
        return transform(*bound.args, **bound.kwargs)
    first = rules.fns[0]
    if bound.arguments.get(first) is None and first in bound.signature.parameters:  # decorator form

        def apply(fn: tp.Callable) -> tp.Any:
            bound.arguments[first] = fn
            return again(*bound.args, **bound.kwargs)

        return apply
    check = _Check(rules, graph, graph_updates, bound)
    if rules.operands:
        roots: list = []
        for p in rules.operands:
            value = bound.arguments.get(p) or ()
            if isinstance(value, dict):
                roots += [(f"kwargs[{k!r}]", v) for k, v in value.items()]
            else:
                roots += [(f"{p}[{i}]", v) for i, v in enumerate(value)]
        check.inputs(roots)
    for p in rules.fns:
        fn = bound.arguments[p]
        if isinstance(fn, (list, tuple)):
            bound.arguments[p] = type(fn)(_checked(check, f, rules.name) for f in fn)
        else:
            bound.arguments[p] = _checked(check, fn, rules.name)
    result = transform(*bound.args, **bound.kwargs)
    return _carry_as_pytree(result) if rules.carry else result


def share_variables(tree: object) -> tp.Any:
    """A copy of `tree` whose graph objects are new but hold the same Variables
    (sharing between and within the objects kept)."""
    graphdef, pairs = core.flatten_graph(tree, copy=False)
    return core.unflatten_graph(graphdef, dict(pairs), copy=False)


def _carry_as_pytree(scanned: tp.Callable) -> tp.Callable:
    """Flax's tree mode gives a loop's carry back as a pytree: new objects holding
    the caller's Variables (`out is model` is False, `out.w is model.w` True)."""

    def run(*args: object, **kwargs: object) -> tp.Any:
        return share_variables(scanned(*args, **kwargs))

    return functools.update_wrapper(run, scanned, updated=())


def _checked(check: _Check, fn: tp.Callable, name: str) -> tp.Callable:
    check_not_bound(fn, f"nnx.{name}")
    return check.wrap(fn)


__all__ = ["Rules", "lifted", "check_prefix", "Structure", "share_variables"]
