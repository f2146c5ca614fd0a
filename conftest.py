"""Shared pytest setup: the names docstring examples in `src/` may use."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnxfn as nnx

# `nnxfn.nnx` replaces itself by `nnxfn` in sys.modules: nothing to collect there.
# tests/spmd/spmd_checks.py builds an 8-device mesh at import (it runs in a subprocess).
collect_ignore = ["src/nnxfn/nnx.py", "tests/spmd/spmd_checks.py"]


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace):
    doctest_namespace.update(nnx=nnx, jax=jax, jnp=jnp, np=np, optax=optax, eqx=eqx)
