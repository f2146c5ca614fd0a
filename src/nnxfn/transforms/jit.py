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
from nnxfn.transforms.sharding import (
    constrain_outputs,
    constrain_updates,
    normalize as normalize_shardings,
    resolve_in_shardings,
    resolve_out_shardings,
)


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
    ):
        check_not_bound(fn, "nnx.jit")
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.static_argnums = as_tuple(static_argnums)
        names = static_argnames
        self.static_argnames = (names,) if isinstance(names, str) else tuple(names or ())
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
        if state_shardings:  # updated state leaves keep their in_shardings
            emitted = constrain_updates(exit_static, emitted, state_shardings)
        if self.out_shardings is not None:  # returned modules: laid out inside the trace
            out_arrays, emitted = constrain_outputs(self.out_shardings, exit_static, out_arrays, emitted)
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
            owners = [positions[o] if isinstance(o, int) else o
                      for o in arg_of_leaves(dyn_args, dyn_kwargs)]
            state_owner, other_owner = leaf_args(entry, owners)
            donate = set(self.donate_argnums) | set(self.donate_argnames)
            donated_idx = tuple(i for i, o in enumerate(state_owner) if o in donate)
            if self.in_shardings is not None or self.out_shardings is not None:
                in_spec = resolve_in_shardings(
                    self.in_shardings, entry, state_owner, other_owner, donated_idx
                )
                shardings = (in_spec, resolve_out_shardings(self.out_shardings))
                per_state = _interleave(in_spec[0], in_spec[1], donated_idx)
                if any(s is not None for s in per_state):
                    state_shardings = tuple(per_state)
        elif self.out_shardings is not None:
            out_spec = resolve_out_shardings(self.out_shardings)
            shardings = None if out_spec is None else (None, out_spec)
        static = (entry.static, donated_idx, statics, static_kw, state_shardings)
        kept, donated = _deinterleave(entry.values, donated_idx)
        return entry, static, kept, donated, shardings

    def __call__(self, *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        entry, static, kept, donated, shardings = self._prepare(args, kwargs)
        aux, out_arrays, emitted = self._jitted(shardings)(static, kept, donated, entry.others)
        return boundary.commit(entry, aux.value, out_arrays, emitted)

    def lower(self, *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        entry, static, kept, donated, shardings = self._prepare(args, kwargs)
        return self._jitted(shardings).lower(static, kept, donated, entry.others)

    def trace(self, *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        entry, static, kept, donated, shardings = self._prepare(args, kwargs)
        return self._jitted(shardings).trace(static, kept, donated, entry.others)

    def eval_shape(self, *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        from nnxfn.transforms.misc import eval_shape

        return eval_shape(self.fn, *args, **kwargs)


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
def jit(fn: tp.Callable, **kwargs: tp.Any) -> JitWrapped: ...
@tp.overload
def jit(fn: None = None, **kwargs: tp.Any) -> tp.Callable[[tp.Callable], JitWrapped]: ...
def jit(fn: tp.Callable | None = None, **kwargs: tp.Any) -> tp.Any:
    """Compile `fn` like `jax.jit`; Modules may appear anywhere in its args and
    outputs, and their updates are committed after each call.

    >>> @jit
    ... def step(model, x):
    ...     return model(x)
    """
    if fn is None:
        return lambda f: JitWrapped(f, **kwargs)
    return JitWrapped(fn, **kwargs)
