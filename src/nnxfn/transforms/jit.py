"""`nnx.jit`: `jax.jit` for functions of Modules, on the shared boundary."""

from __future__ import annotations

import functools
import inspect
import typing as tp

import jax
from jax.sharding import Sharding

from nnxfn.facade import spmd as spmd_facade, varmodes
from nnxfn.transforms import boundary, retrace
from nnxfn.transforms.boundary import Leaf
from nnxfn.transforms.misc import eval_shape
from nnxfn.transforms.common import (
    MethodWrapper,
    Static,
    arg_of_leaves,
    as_tuple,
    check_not_bound,
    leaf_args,
    run_inside,
)
from nnxfn.transforms.axes import check_shared_leaf_specs
from nnxfn.transforms.sharding import (
    spec_for_arg,
    constrain_outputs,
    constrain_updates,
    normalize_sharding_spec,
    place_state_leaves,
    resolve_in_shardings,
    resolve_out_shardings,
)
from nnxfn.transforms.treemode import Rules, lifted


#: `jitted_fn`'s (in_shardings, out_shardings), resolved per pure-argument leaf
JitShardings = tuple[object, object]
#: `JitShardings` as a hashable key: its leaves and tree structure
ShardingsKey = tuple[tuple[object, ...], jax.tree_util.PyTreeDef]


class CallStatic(tp.NamedTuple):
    """The static (hashed) argument of `jitted_fn`: everything a trace is keyed on."""

    entry: boundary.EntryStatic  # the arguments' graph structure
    donated: tuple[int, ...]  # indices of the donated state leaves
    static_args: tuple[tuple[int, tp.Hashable], ...]  # (position, value) of static arguments
    static_kwargs: tuple[tuple[str, tp.Hashable], ...]  # (name, value) of static keyword arguments
    state_shardings: tuple[object, ...]  # one per state leaf, or () when none is given


class Prepared(tp.NamedTuple):
    """One call's arguments, ready for `jitted_fn`: `JitWrapped._prepare`'s result."""

    entry: boundary.EntryRecord  # the flattened arguments (committed to after the call)
    static: CallStatic
    kept: list[Leaf]  # state values not donated
    donated: list[Leaf]  # donated state values
    shardings: JitShardings | None  # (in, out) shardings of `jitted_fn`, if any


class JitArgs(tp.NamedTuple):
    """The positional arguments of `jitted_fn` (`JitWrapped.pure_args`): `jitted_fn(*args)`."""

    static: CallStatic
    kept: list[Leaf]
    donated: list[Leaf]
    others: list[Leaf]  # the arguments' array leaves outside graph objects


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
        in_shardings: object = None,
        out_shardings: object = None,
        keep_unused: bool = False,
        device: jax.Device | None = None,
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
        self.in_shardings, self.out_shardings = in_shardings, out_shardings  # as given
        self._in_spec = normalize_sharding_spec(in_shardings)
        self._out_spec = normalize_sharding_spec(out_shardings)
        self._jit_kwargs: dict[str, tp.Any] = dict(keep_unused=keep_unused, inline=inline)
        if device is not None:
            self._jit_kwargs["device"] = device
        if backend is not None:
            self._jit_kwargs["backend"] = backend
        # One `jax.jit` per layout of the shardings (one in all without shardings): part of
        # this function's identity (`jitted_fn`, its trace count), not a memo.
        self._compiled: dict[ShardingsKey | None, jax.stages.Wrapped] = {}
        self._latest: JitShardings | None = None  # the shardings of the latest call, lower or trace
        self._entries = boundary.EntryCache()

    #: Keyword arguments take no `in_shardings` (as in Flax).
    kwarg_shardings = None

    @property
    def fun(self) -> tp.Callable:
        """The function being compiled (also `__wrapped__`)."""
        return self.fn

    @property
    def jitted_fn(self) -> jax.stages.Wrapped:
        """The `jax.jit` function every call goes through (its `_cache_size()` counts
        the traces, `clear_cache()` empties it, `.lower`/`.trace`/`.eval_shape` stage it).

        Like Flax's, it takes the *pure* arguments, the arguments with their graph
        objects split into static structure and arrays: `self.pure_args(*args, **kwargs)`
        gives them, so `jitted_fn.lower(*jitted.pure_args(model, x))` lowers the call
        `jitted(model, x)`. It returns `(static exit, outputs' arrays, updated state
        arrays)`. With `in_shardings`/`out_shardings` (resolved per Variable) there is
        one per layout of the arguments: this is the latest one used.
        """
        return self._jitted(self._latest)

    @property
    def jax_in_shardings(self) -> object:
        """The `in_shardings` `jitted_fn` was made with, one per pure argument leaf (None: none)."""
        return None if self._latest is None else self._latest[0]

    @property
    def jax_out_shardings(self) -> object:
        """The `out_shardings` `jitted_fn` was made with (None: none)."""
        return None if self._latest is None else self._latest[1]

    def pure_args(self, *args: object, **kwargs: object) -> JitArgs:
        """The positional arguments `jitted_fn` takes for the call `self(*args, **kwargs)`:
        (static structure, kept state arrays, donated state arrays, other leaves)."""
        call = self._prepare(args, kwargs)
        self._latest = call.shardings
        return JitArgs(call.static, call.kept, call.donated, call.entry.others)

    # -- the traced body ---------------------------------------------------------
    def _body(self, static: CallStatic, kept: list, donated: list, others: list) -> tuple:
        entry_static, donated_idx, state_shardings = static.entry, static.donated, static.state_shardings
        values = _interleave(kept, donated, donated_idx)
        retrace.observe(self, self.fn, static, values, others)  # runs only while tracing
        fn = _with_statics(self.fn, static.static_args, static.static_kwargs)
        exit_static, out_arrays, emitted = run_inside(
            fn, entry_static, values, others, "nnx.jit", emit_all=set(donated_idx)
        )
        if state_shardings and exit_static.changed is None:  # structure changed: by path
            emitted = _constrain_by_path(exit_static, emitted, entry_static.paths, state_shardings)
        elif state_shardings:  # updated state leaves keep their in_shardings
            emitted = constrain_updates(exit_static, emitted, state_shardings)
        if self._out_spec is not None:  # returned modules: laid out inside the trace
            out_arrays, emitted = constrain_outputs(self._out_spec, exit_static, out_arrays, emitted)
        refs = _ref_plan(out_arrays, emitted, others)
        if refs is not None:  # jax.jit cannot return Refs: their values leave instead
            out_arrays, emitted = _frozen(out_arrays), _frozen(emitted)
            return _RefStatic((exit_static, refs)), out_arrays, emitted
        return Static(exit_static), out_arrays, emitted

    def _jitted(self, shardings: JitShardings | None) -> jax.stages.Wrapped:
        key: ShardingsKey | None = None
        if shardings is not None:
            leaves, treedef = jax.tree_util.tree_flatten(shardings, is_leaf=lambda x: x is None)
            key = (tuple(leaves), treedef)
        fn = self._compiled.get(key)
        if fn is None:
            kwargs = dict(self._jit_kwargs)
            if shardings is not None:
                kwargs["in_shardings"], kwargs["out_shardings"] = shardings
            fn = jax.jit(self._body, static_argnums=(0,), donate_argnums=(2,), **kwargs)
            self._compiled[key] = fn
        return fn

    def _prepare(self, args: tuple, kwargs: dict) -> Prepared:
        statics = tuple((i, args[i]) for i in self.static_argnums if i < len(args))
        static_kw = tuple(sorted((k, kwargs[k]) for k in self.static_argnames if k in kwargs))
        dyn_args = tuple(a for i, a in enumerate(args) if i not in self.static_argnums)
        dyn_kwargs = {k: v for k, v in kwargs.items() if k not in self.static_argnames}
        entry = self._entries.enter(dyn_args, dyn_kwargs)
        donated_idx: tuple[int, ...] = ()
        shardings: JitShardings | None = None
        state_shardings: tuple[object, ...] = ()
        if self.donate_argnums or self.donate_argnames or self._in_spec is not None:
            positions = [i for i in range(len(args)) if i not in self.static_argnums]
            owners = [positions[o] if isinstance(o, int) else o for o in arg_of_leaves(dyn_args, dyn_kwargs)]
            state_owner, other_owner = leaf_args(entry, owners)
            donate = set(self.donate_argnums) | set(self.donate_argnames)
            donated_idx = tuple(i for i, o in enumerate(state_owner) if o in donate)
            if self._in_spec is not None:
                per_leaf = [spec_for_arg(self._in_spec, o) for o in owners]
                check_shared_leaf_specs("nnx.jit", entry, per_leaf, "in_shardings")
            if self._in_spec is not None or self._out_spec is not None:
                in_spec = resolve_in_shardings(self._in_spec, entry, state_owner, other_owner, donated_idx)
                shardings = (in_spec, resolve_out_shardings(self._out_spec))
                per_state = _interleave(in_spec[0], in_spec[1], donated_idx)
                if any(s is not None for s in per_state):
                    state_shardings = tuple(per_state)
                    place_state_leaves(entry, state_shardings)
        elif self._out_spec is not None:
            out_spec = resolve_out_shardings(self._out_spec)
            shardings = None if out_spec is None else (None, out_spec)
        # by position: a NamedTuple built from keywords costs ~1 µs more, on every call
        static = CallStatic(entry.static, donated_idx, statics, static_kw, state_shardings)
        kept, donated = _deinterleave(entry.values, donated_idx)
        return Prepared(entry, static, kept, donated, shardings)

    def __call__(self, *args: object, **kwargs: object) -> tp.Any:
        call = self._prepare(args, kwargs)
        self._latest = call.shardings
        entry = call.entry
        aux, out_arrays, emitted = self._jitted(call.shardings)(
            call.static, call.kept, call.donated, entry.others
        )
        if aux.__class__ is not Static:  # Refs returned (only then: no per-call cost otherwise)
            return _commit_refs(entry, aux.value, out_arrays, emitted)
        return boundary.commit(entry, aux.value, out_arrays, emitted)

    def lower(self, *args: object, **kwargs: object) -> Lowered:
        """Like `jax.jit(...).lower`; `.compile()` gives a function of the same
        arguments as this one (Modules included) that commits their updates."""
        return self.trace(*args, **kwargs).lower()

    def trace(self, *args: object, **kwargs: object) -> Traced:
        """Trace for these arguments (`jax.jit(...).trace`); `.lower()` gives a `Lowered`."""
        call = self._prepare(args, kwargs)
        self._latest = call.shardings
        traced = self._jitted(call.shardings).trace(call.static, call.kept, call.donated, call.entry.others)
        return Traced(traced, self, call.static)

    def eval_shape(self, *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        """The output's shapes and dtypes (`nnx.eval_shape`); the arguments are not updated."""
        return eval_shape(self.fn, *args, **kwargs)


class _RefStatic(Static):
    """`Static` of (exit static, ref plan): the traced function returned `jax.Ref`s."""

    __slots__ = ()


jax.tree_util.register_pytree_node(_RefStatic, lambda s: ((), s.value), lambda v, _: _RefStatic(v))


def _ref_plan(out_arrays: list, emitted: list, others: list) -> tuple | None:
    """Where the outputs hold `jax.Ref`s or `Box`es (hijax Variables' storage), as
    ((out index, input index or None, is a Box), ...) and ((emitted index, is a
    Box), ...); None when there are none (the common case)."""
    mutable = varmodes.is_mutable
    if not any(map(mutable, out_arrays)) and not any(map(mutable, emitted)):
        return None
    inputs = {id(x): j for j, x in enumerate(others) if mutable(x)}
    outs = tuple((k, inputs.get(id(x)), varmodes.is_box(x)) for k, x in enumerate(out_arrays) if mutable(x))
    states = tuple((k, varmodes.is_box(x)) for k, x in enumerate(emitted) if mutable(x))
    return outs, states


def _frozen(values: list) -> list:
    return [varmodes.read(x) if varmodes.is_mutable(x) else x for x in values]


def _remade(value: Leaf, box: bool) -> Leaf:
    return varmodes.to_box(value) if box else jax.new_ref(value)


def _commit_refs(entry: boundary.EntryRecord, plan: tuple, out_arrays: list, emitted: list) -> tp.Any:
    """Commit after a call that returned Refs/Boxes: an argument one comes back as
    the caller's own object; one made inside comes back as a new one holding its value."""
    exit_static, (outs, states) = plan
    out_arrays, emitted = list(out_arrays), list(emitted)
    for k, j, box in outs:
        out_arrays[k] = _remade(out_arrays[k], box) if j is None else entry.others[j]
    for k, box in states:
        emitted[k] = _remade(emitted[k], box)
    return boundary.commit(entry, exit_static, out_arrays, emitted)


def _constrain_by_path(
    exit_static: boundary.ExitStatic, emitted: list, paths: tuple, shardings: tuple
) -> list:
    """After a structural change, leaves still at an input leaf's path keep its
    in_sharding (also when the Variable was replaced, e.g. `m.kernel = array`)."""
    by_path = {(0,) + p: s for p, s in zip(paths, shardings) if isinstance(s, Sharding)}
    out = list(emitted)
    for j, path in enumerate(exit_static.paths):
        s = by_path.get(path)
        if s is not None and hasattr(out[j], "shape"):
            out[j] = spmd_facade.constrain(out[j], s)
    return out


S = tp.TypeVar("S", jax.stages.Traced, jax.stages.Lowered, jax.stages.Compiled)


class Stage(tp.Generic[S]):
    """What `Traced`, `Lowered` and `Compiled` share: the `JitWrapped` they come from
    (`jit_wrapped`) and the JAX stage they wrap (`traced`, `lowered`, `compiled`), whose
    `in_tree`, `in_avals`, `donate_argnums`, ... describe `jitted_fn`'s pure arguments."""

    __slots__ = ("_inner", "jit_wrapped", "_static", "_bound")

    _inner: S

    def __init__(self, inner: S, jit_wrapped: JitWrapped, static: CallStatic, bound: tuple[object, ...] = ()):
        self._inner, self.jit_wrapped, self._static, self._bound = inner, jit_wrapped, static, bound

    def with_partial_args(self, partial_args: tuple[object, ...]) -> tp.Self:
        """This stage, for a function whose first arguments `partial_args` are bound
        (`nnx.jit_partial`): its compiled form takes the remaining ones."""
        return type(self)(self._inner, self.jit_wrapped, self._static, partial_args)

    @property
    def in_tree(self) -> jax.tree_util.PyTreeDef:
        return self._inner.in_tree

    @property
    def in_avals(self) -> tp.Any:
        return self._inner.in_avals

    @property
    def donate_argnums(self) -> tuple[int, ...]:
        return self._inner.donate_argnums


class Traced(Stage[jax.stages.Traced]):
    """`JitWrapped.trace(...)`: JAX's `Traced` (as `.traced`); `.lower()` gives a `Lowered`."""

    __slots__ = ()

    @property
    def traced(self) -> jax.stages.Traced:
        return self._inner

    @property
    def out_info(self) -> tp.Any:
        return self._inner.out_info

    @property
    def jaxpr(self) -> tp.Any:
        """The traced jaxpr (of `jitted_fn` on the pure arguments)."""
        return self._inner.jaxpr

    def lower(self, *, lowering_platforms: tuple[str, ...] | None = None) -> Lowered:
        lowered = self._inner.lower(lowering_platforms=lowering_platforms)
        return Lowered(lowered, self.jit_wrapped, self._static, self._bound)


class Lowered(Stage[jax.stages.Lowered]):
    """`JitWrapped.lower(...)`: JAX's `Lowered` (as `.lowered`), whose `compile()`
    returns a `Compiled` taking the original arguments."""

    __slots__ = ()

    @property
    def lowered(self) -> jax.stages.Lowered:
        return self._inner

    @property
    def args_info(self) -> tp.Any:
        return self._inner.args_info

    @property
    def out_tree(self) -> jax.tree_util.PyTreeDef:
        return self._inner.out_tree

    def compile(self, compiler_options: jax.stages.CompilerOptions | None = None) -> Compiled:
        compiled = self._inner.compile(compiler_options)
        return Compiled(compiled, self.jit_wrapped, self._static, self._bound)

    def as_text(self, dialect: str | None = None, *, debug_info: bool = False) -> str:
        return self._inner.as_text(dialect=dialect, debug_info=debug_info)

    def compiler_ir(self, dialect: str | None = None) -> tp.Any:
        return self._inner.compiler_ir(dialect=dialect)

    def cost_analysis(self) -> tp.Any:
        return self._inner.cost_analysis()


class Compiled(Stage[jax.stages.Compiled]):
    """A compiled `nnx.jit` function (JAX's `Compiled` as `.compiled`): call it with the
    arguments it was lowered for (same structure and shapes); Module updates are
    committed as by the jitted call."""

    __slots__ = ()

    @property
    def compiled(self) -> jax.stages.Compiled:
        return self._inner

    @property
    def args_info(self) -> tp.Any:
        return self._inner.args_info

    @property
    def out_tree(self) -> jax.tree_util.PyTreeDef:
        return self._inner.out_tree

    @property
    def input_shardings(self) -> tp.Any:
        return self._inner.input_shardings

    @property
    def output_shardings(self) -> tp.Any:
        return self._inner.output_shardings

    @property
    def input_layouts(self) -> tp.Any:
        """The layouts of the pure arguments (JAX's `input_formats`)."""
        return self._inner.input_formats

    def as_text(self) -> str | None:
        return self._inner.as_text()

    def cost_analysis(self) -> tp.Any:
        return self._inner.cost_analysis()

    def memory_analysis(self) -> tp.Any:
        return self._inner.memory_analysis()

    def runtime_executable(self) -> tp.Any:
        return self._inner.runtime_executable()

    def __call__(self, *args: object, **kwargs: object) -> tp.Any:
        call = self.jit_wrapped._prepare(self._bound + args, kwargs)
        entry = call.entry
        if call.static != self._static:
            raise TypeError(
                "nnx.jit: this compiled function was lowered for arguments of another "
                "structure (other Modules, attributes or static arguments); lower and compile "
                "again for these arguments, or call the jitted function itself."
            )
        aux, out_arrays, emitted = self._inner(call.kept, call.donated, entry.others)
        if aux.__class__ is not Static:
            return _commit_refs(entry, aux.value, out_arrays, emitted)
        return boundary.commit(entry, aux.value, out_arrays, emitted)


def _names_of(fn: tp.Callable, positions: tuple[int, ...]) -> tuple[str, ...]:
    """Names of the positional parameters of `fn` at `positions`."""
    if not positions:
        return ()
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
    in_shardings: object = ...,
    out_shardings: object = ...,
    static_argnums: int | tp.Sequence[int] | None = ...,
    static_argnames: str | tp.Sequence[str] | None = ...,
    donate_argnums: int | tp.Sequence[int] | None = ...,
    donate_argnames: str | tp.Sequence[str] | None = ...,
    keep_unused: bool = ...,
    device: jax.Device | None = ...,
    backend: str | None = ...,
    inline: bool = ...,
    graph: bool | None = ...,
    graph_updates: bool | None = ...,
) -> JitWrapped: ...
@tp.overload
def jit(
    fun: None = None,
    *,
    in_shardings: object = ...,
    out_shardings: object = ...,
    static_argnums: int | tp.Sequence[int] | None = ...,
    static_argnames: str | tp.Sequence[str] | None = ...,
    donate_argnums: int | tp.Sequence[int] | None = ...,
    donate_argnames: str | tp.Sequence[str] | None = ...,
    keep_unused: bool = ...,
    device: jax.Device | None = ...,
    backend: str | None = ...,
    inline: bool = ...,
    graph: bool | None = ...,
    graph_updates: bool | None = ...,
) -> tp.Callable[[tp.Callable], JitWrapped]: ...
@lifted(Rules("jit", fns=("fun",), prefixes=("in_shardings", "out_shardings")))
def jit(
    fun: tp.Callable | None = None,
    *,
    in_shardings: object = None,
    out_shardings: object = None,
    static_argnums: int | tp.Sequence[int] | None = None,
    static_argnames: str | tp.Sequence[str] | None = None,
    donate_argnums: int | tp.Sequence[int] | None = None,
    donate_argnames: str | tp.Sequence[str] | None = None,
    keep_unused: bool = False,
    device: jax.Device | None = None,
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

    def wrap(f: tp.Callable[..., tp.Any]) -> JitWrapped:
        return JitWrapped(
            f,
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

    return wrap if fun is None else wrap(fun)
