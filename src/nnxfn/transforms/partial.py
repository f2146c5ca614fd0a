"""`nnx.jit_partial` and `nnx.cached_partial`: Flax's opt-in fast paths.

In Flax these skip graph traversals for arguments fixed in advance. nnxfn's
default `nnx.jit` already reuses its flattening of unchanged arguments
between calls, so both are thin: `jit_partial` is `nnx.jit` with leading
arguments bound (shardings and static/donate numbers count them), and
`cached_partial` binds copies of the given graph objects that share their
Variables (so updates reach the originals and the copies are reused on every
call).
"""

from __future__ import annotations

import functools
import typing as tp

from nnxfn.core import treemode as core_tm
from nnxfn.core.modes import set_graph_mode
from nnxfn.transforms.boundary import is_graph_object
from nnxfn.transforms.common import MethodWrapper
from nnxfn.transforms.jit import JitWrapped, Lowered, Traced
from nnxfn.transforms.treemode import Rules, lifted, share_variables


class JitPartial(MethodWrapper):
    """`nnx.jit_partial(fun, *partial_args)`: call with the remaining arguments;
    `.lower`/`.trace`/`.eval_shape` take them too. `jitted_fn`, `in_shardings`,
    `out_shardings` are those of the `nnx.jit` function it calls (`jitted`); `graph`
    is the mode flag it was made with."""

    def __init__(self, jitted: JitWrapped, partial_args: tuple, graph: bool | None = None):
        functools.update_wrapper(self, jitted.fn)
        self.jitted = jitted
        self.partial_args = partial_args
        self.graph = set_graph_mode.current_value() if graph is None else graph

    @property
    def fn(self) -> tp.Callable:  # type: ignore[override]  # read-only: jitted.fn
        return self.jitted.fn

    @property
    def fun(self) -> tp.Callable:
        return self.jitted.fn

    @property
    def jitted_fn(self) -> tp.Any:
        """`jax.jit` function of the calls; its pure arguments include `partial_args`'."""
        return self.jitted.jitted_fn

    @property
    def in_shardings(self) -> tp.Any:
        return self.jitted.in_shardings

    @property
    def out_shardings(self) -> tp.Any:
        return self.jitted.out_shardings

    def __call__(self, *args: object, **kwargs: object) -> tp.Any:
        return self.jitted(*self.partial_args, *args, **kwargs)

    def lower(self, *args: tp.Any, **kwargs: tp.Any) -> Lowered:
        """`.compile()` of the result takes the remaining arguments too."""
        lowered = self.jitted.lower(*self.partial_args, *args, **kwargs)
        return lowered.with_partial_args(self.partial_args)

    def trace(self, *args: tp.Any, **kwargs: tp.Any) -> Traced:
        return self.jitted.trace(*self.partial_args, *args, **kwargs).with_partial_args(self.partial_args)

    def eval_shape(self, *args: object, **kwargs: object) -> tp.Any:
        return self.jitted.eval_shape(*self.partial_args, *args, **kwargs)


@lifted(
    Rules("jit_partial", fns=("fun",), prefixes=("in_shardings", "out_shardings"), operands=("partial_args",))
)
def jit_partial(
    fun: tp.Callable,
    *partial_args: tp.Any,
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
) -> JitPartial:
    """`nnx.jit(fun, ...)` with `partial_args` bound as its first arguments.

    Argument numbers and `in_shardings` refer to `fun`'s full argument list.
    `graph=False`/`graph_updates=False`: as `nnx.jit`.
    """
    jitted = JitWrapped(
        fun,
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
    return JitPartial(jitted, partial_args, graph)


def cached_partial(
    f: tp.Callable, *cached_args: tp.Any, graph: bool | None = None, graph_updates: bool | None = None
) -> tp.Callable:
    """`functools.partial(f, *cached_args)` for a transformed `f` (e.g. a train step
    made with `nnx.jit`), where each graph object in `cached_args` is replaced by
    a copy sharing its Variables: updates reach the originals, the copies are
    the same objects on every call. Their structure must not change inside `f`.
    As in Flax, a graph-mode API: with `graph=False` or `graph_updates=False`
    (given, or from `nnx.set_graph_mode`/`nnx.set_graph_updates`) it raises.
    """
    if core_tm.skips_graph_updates(graph, graph_updates):
        raise ValueError(
            "nnx.cached_partial is a graph-mode API: it needs graph=True and graph_updates=True "
            f"(asked for: {core_tm.mode_words(graph, graph_updates)}). Call the transformed "
            "function with all its arguments instead (nnxfn's `nnx.jit` already reuses its "
            "flattening of unchanged arguments), use `nnx.jit_partial(f, *args, graph=False)`, "
            "or `nnx.compat.cached_partial(...)`, which sets both flags."
        )
    if any(is_graph_object(leaf) for leaf in _leaves(cached_args)):
        cached_args = share_variables(cached_args)
    return functools.partial(f, *cached_args)


def _leaves(tree: object) -> list:
    import jax

    return jax.tree_util.tree_leaves(tree, is_leaf=is_graph_object)


__all__ = ["jit_partial", "cached_partial", "JitPartial"]
