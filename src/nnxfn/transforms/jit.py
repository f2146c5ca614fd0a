"""`nnx.jit`: `jax.jit` for functions of Modules, on the shared boundary."""

from __future__ import annotations

import functools
import typing as tp

import jax

from nnxfn.transforms import boundary, retrace
from nnxfn.transforms.common import (
    MethodWrapper,
    Static,
    arg_of_leaves,
    as_tuple,
    check_not_bound,
    leaf_args,
    run_inside,
)
from nnxfn.transforms.axes import check_consistent_aliasing
from nnxfn.transforms.sharding import (
    _for_arg,
    constrain_outputs,
    constrain_updates,
    normalize as normalize_shardings,
    place,
    resolve_in_shardings,
    resolve_out_shardings,
)
from nnxfn.transforms.treemode import Rules, lifted


class JitWrapped(MethodWrapper):
    """The result of `nnx.jit(fn)`: call it like `fn`; `.lower`/`.trace`/`.eval_shape`."""

    def __init__(
        self,
        fn: tp.Callable,
        *,
        static_argnums: int | tp.Sequence[int] | None = None,
        static_argnames: str | tp.Sequence[str] | None = None,
        donate_argnums: int | tp.Sequence[int] | None = None,
        donate_argnames: str | tp.Sequence[str] | None = None,
        in_shardings: tp.Any = None,
        out_shardings: tp.Any = None,
        keep_unused: bool = False,
        device: tp.Any = None,
        backend: str | None = None,
        inline: bool = False,
        graph: bool | None = None,
        graph_updates: bool | None = None,
    ):
        # `graph`/`graph_updates`: read by `@lifted` on `jit` (tree-mode checks and results).
        check_not_bound(fn, "nnx.jit")
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.static_argnums = as_tuple(static_argnums)
        names = static_argnames
        self.static_argnames = (names,) if isinstance(names, str) else tuple(names or ())
        # as jax.jit: names also mark the argument passed by position, and numbers by name
        self.static_argnums += tuple(
            i for i in _positions_of(fn, self.static_argnames) if i not in self.static_argnums
        )
        self.static_argnames += tuple(
            n for n in _names_of(fn, self.static_argnums) if n not in self.static_argnames
        )
        self.donate_argnums = as_tuple(donate_argnums)
        names = donate_argnames
        self.donate_argnames = (names,) if isinstance(names, str) else tuple(names or ())
        self.donate_argnums += _positions_of(fn, self.donate_argnames)
        self.in_shardings = normalize_shardings(in_shardings)
        self.out_shardings = normalize_shardings(out_shardings)
        self._jit_kwargs = dict(keep_unused=keep_unused, inline=inline)
        if device is not None:
            self._jit_kwargs["device"] = device
        if backend is not None:
            self._jit_kwargs["backend"] = backend
        self._compiled: dict[tp.Any, tp.Callable] = {}
        self._entries = boundary.EntryCache()

    # -- the traced body ---------------------------------------------------------
    def _body(self, static: tuple, kept: list, donated: list, others: list) -> tuple:
        entry_static, donated_idx, statics, static_kw, state_shardings = static
        values = _interleave(kept, donated, donated_idx)
        retrace.observe(self, self.fn, static, values, others)  # runs only while tracing
        fn = _with_statics(self.fn, statics, static_kw)
        exit_static, out_arrays, emitted = run_inside(
            fn, entry_static, values, others, "nnx.jit", emit_all=set(donated_idx)
        )
        if state_shardings and exit_static.changed is None:  # structure changed: by path
            emitted = _constrain_by_path(exit_static, emitted, entry_static.paths, state_shardings)
        elif state_shardings:  # updated state leaves keep their in_shardings
            emitted = constrain_updates(exit_static, emitted, state_shardings)
        if self.out_shardings is not None:  # returned modules: laid out inside the trace
            out_arrays, emitted = constrain_outputs(self.out_shardings, exit_static, out_arrays, emitted)
        refs = _ref_plan(out_arrays, emitted, others)
        if refs is not None:  # jax.jit cannot return Refs: their values leave instead
            out_arrays, emitted = _frozen(out_arrays), _frozen(emitted)
            return _RefStatic((exit_static, refs)), out_arrays, emitted
        return Static(exit_static), out_arrays, emitted

    def _jitted(self, shardings: tp.Any) -> tp.Callable:
        key = jax.tree_util.tree_flatten(shardings, is_leaf=lambda x: x is None)
        key = (tuple(key[0]), key[1])
        fn = self._compiled.get(key)
        if fn is None:
            kwargs = dict(self._jit_kwargs)
            if shardings is not None:
                kwargs["in_shardings"], kwargs["out_shardings"] = shardings
            fn = jax.jit(self._body, static_argnums=(0,), donate_argnums=(2,), **kwargs)
            self._compiled[key] = fn
        return fn

    def _prepare(self, args: tuple, kwargs: dict) -> tuple:
        statics = tuple((i, args[i]) for i in self.static_argnums if i < len(args))
        static_kw = tuple(sorted((k, kwargs[k]) for k in self.static_argnames if k in kwargs))
        dyn_args = tuple(a for i, a in enumerate(args) if i not in self.static_argnums)
        dyn_kwargs = {k: v for k, v in kwargs.items() if k not in self.static_argnames}
        entry = self._entries.enter(dyn_args, dyn_kwargs)
        donated_idx: tuple[int, ...] = ()
        shardings = None
        state_shardings: tuple = ()
        if self.donate_argnums or self.donate_argnames or self.in_shardings is not None:
            positions = [i for i in range(len(args)) if i not in self.static_argnums]
            owners = [positions[o] if isinstance(o, int) else o for o in arg_of_leaves(dyn_args, dyn_kwargs)]
            state_owner, other_owner = leaf_args(entry, owners)
            donate = set(self.donate_argnums) | set(self.donate_argnames)
            donated_idx = tuple(i for i, o in enumerate(state_owner) if o in donate)
            if self.in_shardings is not None:
                per_leaf = [_for_arg(self.in_shardings, o) for o in owners]
                check_consistent_aliasing("nnx.jit", entry, per_leaf, "in_shardings")
            if self.in_shardings is not None or self.out_shardings is not None:
                in_spec = resolve_in_shardings(
                    self.in_shardings, entry, state_owner, other_owner, donated_idx
                )
                shardings = (in_spec, resolve_out_shardings(self.out_shardings))
                per_state = _interleave(in_spec[0], in_spec[1], donated_idx)
                if any(s is not None for s in per_state):
                    state_shardings = tuple(per_state)
                    place(entry, state_shardings)
        elif self.out_shardings is not None:
            out_spec = resolve_out_shardings(self.out_shardings)
            shardings = None if out_spec is None else (None, out_spec)
        static = (entry.static, donated_idx, statics, static_kw, state_shardings)
        kept, donated = _deinterleave(entry.values, donated_idx)
        return entry, static, kept, donated, shardings

    def __call__(self, *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        entry, static, kept, donated, shardings = self._prepare(args, kwargs)
        aux, out_arrays, emitted = self._jitted(shardings)(static, kept, donated, entry.others)
        if aux.__class__ is not Static:  # Refs returned (only then: no per-call cost otherwise)
            return _commit_refs(entry, aux.value, out_arrays, emitted)
        return boundary.commit(entry, aux.value, out_arrays, emitted)

    def lower(self, *args: tp.Any, **kwargs: tp.Any) -> "Lowered":
        """Like `jax.jit(...).lower`; `.compile()` gives a function of the same
        arguments as this one (Modules included) that commits their updates."""
        entry, static, kept, donated, shardings = self._prepare(args, kwargs)
        lowered = self._jitted(shardings).lower(static, kept, donated, entry.others)
        return Lowered(self, lowered, static)

    def trace(self, *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        entry, static, kept, donated, shardings = self._prepare(args, kwargs)
        return self._jitted(shardings).trace(static, kept, donated, entry.others)

    def eval_shape(self, *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        from nnxfn.transforms.misc import eval_shape

        return eval_shape(self.fn, *args, **kwargs)


class _RefStatic(Static):
    """`Static` of (exit static, ref plan): the traced function returned `jax.Ref`s."""

    __slots__ = ()


jax.tree_util.register_pytree_node(_RefStatic, lambda s: ((), s.value), lambda v, _: _RefStatic(v))


def _ref_plan(out_arrays: list, emitted: list, others: list) -> tuple | None:
    """Where the outputs hold `jax.Ref`s, as ((out index, input index or None), ...) and
    (emitted index, ...); None when there are none (the common case)."""
    if not any(isinstance(x, jax.Ref) for x in out_arrays) and not any(
        isinstance(x, jax.Ref) for x in emitted
    ):
        return None
    inputs = {id(x): j for j, x in enumerate(others) if isinstance(x, jax.Ref)}
    outs = tuple((k, inputs.get(id(x))) for k, x in enumerate(out_arrays) if isinstance(x, jax.Ref))
    states = tuple(k for k, x in enumerate(emitted) if isinstance(x, jax.Ref))
    return outs, states


def _frozen(values: list) -> list:
    return [x[...] if isinstance(x, jax.Ref) else x for x in values]


def _commit_refs(entry: boundary.Entry, plan: tuple, out_arrays: list, emitted: list) -> tp.Any:
    """Commit after a call that returned Refs: an argument Ref comes back as the
    caller's own object; a Ref made inside comes back as a new Ref holding its value."""
    exit_static, (outs, states) = plan
    out_arrays, emitted = list(out_arrays), list(emitted)
    for k, j in outs:
        out_arrays[k] = jax.new_ref(out_arrays[k]) if j is None else entry.others[j]
    for k in states:
        emitted[k] = jax.new_ref(emitted[k])
    return boundary.commit(entry, exit_static, out_arrays, emitted)


def _constrain_by_path(
    exit_static: boundary.ExitStatic, emitted: list, paths: tuple, shardings: tuple
) -> list:
    """After a structural change, leaves still at an input leaf's path keep its
    in_sharding (also when the Variable was replaced, e.g. `m.kernel = array`)."""
    from jax.sharding import Sharding

    from nnxfn.facade import spmd as spmd_facade

    by_path = {(0,) + p: s for p, s in zip(paths, shardings) if isinstance(s, Sharding)}
    out = list(emitted)
    for j, path in enumerate(exit_static.paths):
        s = by_path.get(path)
        if s is not None and hasattr(out[j], "shape"):
            out[j] = spmd_facade.constrain(out[j], s)
    return out


class Lowered:
    """`JitWrapped.lower(...)`: JAX's `Lowered` (its methods are available) whose
    `compile()` returns a `Compiled` taking the original arguments."""

    def __init__(self, wrapped: JitWrapped, lowered: tp.Any, static: tuple, bound: tuple = ()):
        self._wrapped, self._lowered, self._static, self._bound = wrapped, lowered, static, bound

    def compile(self, *args: tp.Any, **kwargs: tp.Any) -> "Compiled":
        return Compiled(self._wrapped, self._lowered.compile(*args, **kwargs), self._static, self._bound)

    def __getattr__(self, name: str) -> tp.Any:
        return getattr(self._lowered, name)


class Compiled:
    """A compiled `nnx.jit` function: call it with the arguments it was lowered for
    (same structure and shapes); Module updates are committed as by the jitted call."""

    def __init__(self, wrapped: JitWrapped, compiled: tp.Any, static: tuple, bound: tuple = ()):
        self._wrapped, self._compiled, self._static, self._bound = wrapped, compiled, static, bound

    def __call__(self, *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        entry, static, kept, donated, _ = self._wrapped._prepare(self._bound + args, kwargs)
        if static != self._static:
            raise TypeError(
                "nnx.jit: this compiled function was lowered for arguments of another "
                "structure (other Modules, attributes or static arguments); lower and compile "
                "again for these arguments, or call the jitted function itself."
            )
        aux, out_arrays, emitted = self._compiled(kept, donated, entry.others)
        if aux.__class__ is not Static:
            return _commit_refs(entry, aux.value, out_arrays, emitted)
        return boundary.commit(entry, aux.value, out_arrays, emitted)

    def __getattr__(self, name: str) -> tp.Any:
        return getattr(self._compiled, name)


def _names_of(fn: tp.Callable, positions: tuple[int, ...]) -> tuple[str, ...]:
    """Names of the positional parameters of `fn` at `positions`."""
    if not positions:
        return ()
    import inspect

    try:
        params = [
            p
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.POSITIONAL_ONLY)
        ]
    except (TypeError, ValueError):
        return ()
    return tuple(
        params[i].name
        for i in positions
        if i < len(params) and params[i].kind is params[i].POSITIONAL_OR_KEYWORD
    )


def _positions_of(fn: tp.Callable, names: tuple[str, ...]) -> tuple[int, ...]:
    """Positions of the named parameters of `fn` (so names also donate positional args)."""
    if not names:
        return ()
    import inspect

    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return ()
    return tuple(params.index(n) for n in names if n in params)


def _interleave(kept: list, donated: list, donated_idx: tuple[int, ...]) -> list:
    if not donated_idx:
        return kept
    at = dict(zip(donated_idx, donated))
    it = iter(kept)
    return [at[i] if i in at else next(it) for i in range(len(kept) + len(donated))]


def _deinterleave(values: list, donated_idx: tuple[int, ...]) -> tuple[list, list]:
    if not donated_idx:
        return values, []
    chosen = set(donated_idx)
    return (
        [v for i, v in enumerate(values) if i not in chosen],
        [values[i] for i in donated_idx],
    )


def _with_statics(fn: tp.Callable, statics: tuple, static_kw: tuple) -> tp.Callable:
    if not statics and not static_kw:
        return fn

    def call(*args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        full = list(args)
        for i, value in statics:
            full.insert(i, value)
        return fn(*full, **kwargs, **dict(static_kw))

    return call


@tp.overload
def jit(
    fun: tp.Callable,
    *,
    in_shardings: tp.Any = ...,
    out_shardings: tp.Any = ...,
    static_argnums: int | tp.Sequence[int] | None = ...,
    static_argnames: str | tp.Sequence[str] | None = ...,
    donate_argnums: int | tp.Sequence[int] | None = ...,
    donate_argnames: str | tp.Sequence[str] | None = ...,
    keep_unused: bool = ...,
    device: tp.Any = ...,
    backend: str | None = ...,
    inline: bool = ...,
    graph: bool | None = ...,
    graph_updates: bool | None = ...,
) -> JitWrapped: ...
@tp.overload
def jit(
    fun: None = None,
    *,
    in_shardings: tp.Any = ...,
    out_shardings: tp.Any = ...,
    static_argnums: int | tp.Sequence[int] | None = ...,
    static_argnames: str | tp.Sequence[str] | None = ...,
    donate_argnums: int | tp.Sequence[int] | None = ...,
    donate_argnames: str | tp.Sequence[str] | None = ...,
    keep_unused: bool = ...,
    device: tp.Any = ...,
    backend: str | None = ...,
    inline: bool = ...,
    graph: bool | None = ...,
    graph_updates: bool | None = ...,
) -> tp.Callable[[tp.Callable], JitWrapped]: ...
@lifted(Rules("jit", fns=("fun",), prefixes=("in_shardings", "out_shardings")))
def jit(
    fun: tp.Callable | None = None,
    *,
    in_shardings: tp.Any = None,
    out_shardings: tp.Any = None,
    static_argnums: int | tp.Sequence[int] | None = None,
    static_argnames: str | tp.Sequence[str] | None = None,
    donate_argnums: int | tp.Sequence[int] | None = None,
    donate_argnames: str | tp.Sequence[str] | None = None,
    keep_unused: bool = False,
    device: tp.Any = None,
    backend: str | None = None,
    inline: bool = False,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> tp.Any:
    """Compile `fun` like `jax.jit`; Modules may appear anywhere in its args and
    outputs, and their updates are committed after each call. With
    `graph=False`/`graph_updates=False` (Flax's tree mode; see `transforms/treemode.py`)
    only the Variable values written inside are committed (structural updates are
    dropped, as in Flax) and Flax's tree-mode errors apply.

    >>> @jit
    ... def step(model, x):
    ...     return model(x)
    """
    options = dict(
        in_shardings=in_shardings,
        out_shardings=out_shardings,
        static_argnums=static_argnums,
        static_argnames=static_argnames,
        donate_argnums=donate_argnums,
        donate_argnames=donate_argnames,
        keep_unused=keep_unused,
        device=device,
        backend=backend,
        inline=inline,
    )
    if fun is None:
        return lambda f: JitWrapped(f, **options)
    return JitWrapped(fun, **options)
