"""`nnx.tracers`: which JAX trace an object belongs to."""

from __future__ import annotations

import jax.extend.core as jax_core


def current_jax_trace() -> object:
    """An opaque token of the JAX trace that is active now (equal tokens: same trace)."""
    return jax_core.get_opaque_trace_state(convention="nnx")


class TraceState:
    """Remembers the JAX trace it was made in; `is_valid()` is True while that trace is current."""

    __slots__ = ("_trace",)

    def __init__(self) -> None:
        self._trace = current_jax_trace()

    @property
    def jax_trace(self) -> object:
        return self._trace

    def is_valid(self) -> bool:
        return self._trace == current_jax_trace()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TraceState) and self._trace == other._trace

    def __hash__(self) -> int:
        return hash(self._trace)
