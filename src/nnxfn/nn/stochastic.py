"""Dropout (Flax NNX API): zero a random `rate` fraction of the inputs and
scale the rest by `1 / (1 - rate)`.

Given `rngs` at construction, the layer keeps a forked stream of
`rngs[rng_collection]`, so its random state is Variables inside the layer;
`rngs=` at call time (an `Rngs`, an `RngStream` or a key) takes precedence.
"""

from __future__ import annotations

import typing as tp

import jax
import jax.numpy as jnp
from jax import lax

from nnxfn.facade.module import Module
from nnxfn.facade.rngs import Rngs, RngStream

Array = jax.Array
RngLike = tp.Union[Rngs, RngStream, jax.Array]


def _no_rngs() -> ValueError:
    return ValueError(
        "Dropout: `deterministic` is False, but no `rngs` argument was provided to Dropout "
        "(nor at construction). Give them at "
        "construction, `nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0))`, or at the call, "
        "`dropout(x, rngs=rngs)`; or call with `deterministic=True` / use `model.eval()`."
    )


def _bad_rngs(rngs: object) -> TypeError:
    return TypeError(
        f"Dropout: rngs must be an nnx.Rngs, an nnx.RngStream or a jax.random key, got {type(rngs).__name__}."
    )


def _explicit_sharding(inputs: Array) -> jax.sharding.NamedSharding | None:
    """The inputs' sharding if their mesh has Explicit axes (where the mask
    must match it: a mismatch is a type error), else None. Reads the abstract
    type only (cheap while tracing)."""
    sharding = getattr(jax.typeof(inputs), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or mesh.empty:
        return None
    if not any(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types):
        return None
    return sharding


def _mask_sharding(
    sharding: jax.sharding.NamedSharding | None, shape: list[int]
) -> jax.sharding.NamedSharding | None:
    """`sharding` for a mask of `shape`: unsplit along broadcast (size-1) dims."""
    if sharding is None:
        return None
    spec = list(sharding.spec) + [None] * (len(shape) - len(sharding.spec))
    spec = [None if n == 1 else s for n, s in zip(shape, spec)]
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*spec))


class Dropout(Module):
    """Randomly zeros inputs with probability `rate` (in training mode).

    >>> drop = Dropout(0.5, rngs=Rngs(dropout=0))
    >>> y = drop(jnp.ones(4))                       # entries are 0 or 2
    >>> bool(((y == 0) | (y == 2)).all())
    True
    >>> drop.eval(); drop(jnp.ones(4))              # deterministic: identity
    Array([1., 1., 1., 1.], dtype=float32)
    """

    def __init__(
        self,
        rate: float,
        *,
        broadcast_dims: tp.Sequence[int] = (),
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        rngs: Rngs | RngStream | None = None,
    ):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"Dropout: rate must be in [0, 1], got {rate}.")
        self.rate = rate
        self.broadcast_dims = tuple(broadcast_dims)
        self.deterministic = deterministic
        self.rng_collection = rng_collection
        self.rngs: RngStream | None
        if isinstance(rngs, Rngs):
            self.rngs = rngs[rng_collection].fork()
        elif isinstance(rngs, RngStream):
            self.rngs = rngs.fork()
        elif rngs is None:
            self.rngs = None
        else:
            raise _bad_rngs(rngs)

    def set_view(self, deterministic: bool | None = None) -> None:
        """Used by `nnx.view` (and listed by `nnx.view_info`).

        Args:
          deterministic: if True, disables dropout masking.
        """
        if deterministic is not None:
            self.deterministic = deterministic

    def __call__(
        self, inputs: Array, *, deterministic: bool | None = None, rngs: RngLike | None = None
    ) -> Array:
        inputs = jnp.asarray(inputs)
        if deterministic is None:
            deterministic = self.deterministic
        if deterministic is None:
            raise ValueError(
                "Dropout: deterministic is None. Pass it to the constructor or the call "
                "(`dropout(x, deterministic=False)`), or use `model.train()` / `model.eval()`."
            )
        if self.rate == 0.0 or deterministic:
            return inputs
        if self.rate == 1.0:
            return jnp.zeros_like(inputs)
        key = self._key(rngs if rngs is not None else self.rngs)
        shape = list(inputs.shape)
        for dim in self.broadcast_dims:
            if not -inputs.ndim <= dim < inputs.ndim:
                raise ValueError(
                    f"Dropout: broadcast_dims {self.broadcast_dims} has axis {dim}, out of "
                    f"range for inputs of shape {inputs.shape}."
                )
            shape[dim] = 1
        keep_prob = 1.0 - self.rate
        sharding = _explicit_sharding(inputs)
        keep = jax.random.bernoulli(
            key, p=keep_prob, shape=tuple(shape), out_sharding=_mask_sharding(sharding, shape)
        )
        keep = jnp.broadcast_to(keep, inputs.shape)
        if sharding is not None and tuple(shape) != inputs.shape:
            keep = jax.sharding.reshard(keep, sharding)
        return lax.select(keep, inputs / keep_prob, jnp.zeros_like(inputs))

    def _key(self, rngs: RngLike | None) -> Array:
        if rngs is None:
            raise _no_rngs()
        if isinstance(rngs, Rngs):
            return rngs[self.rng_collection]()
        if isinstance(rngs, RngStream):
            return rngs()
        if isinstance(rngs, jax.Array):
            return rngs
        raise _bad_rngs(rngs)
