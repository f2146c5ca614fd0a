"""Shared pytest setup: the names docstring examples in `src/` may use."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnxfn as nnx

# `nnxfn.nnx` replaces itself by `nnxfn` in sys.modules: nothing to collect there.
collect_ignore = ["src/nnxfn/nnx.py"]


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace):
    doctest_namespace.update(nnx=nnx, jax=jax, jnp=jnp, np=np, optax=optax, eqx=eqx)
