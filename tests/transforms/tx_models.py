"""Small test-local modules and helpers shared by the transform tests.

Kept independent of `nnxfn.nn` (written in parallel) so the transform tests
only exercise the transforms and the facade.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import nnxfn as nnx


class Linear(nnx.Module):
    def __init__(self, din: int, dout: int, *, rngs: nnx.Rngs):
        self.kernel = nnx.Param(jax.random.normal(rngs.params(), (din, dout)) / jnp.sqrt(din))
        self.bias = nnx.Param(0.1 * jax.random.normal(rngs.params(), (dout,)))

    def __call__(self, x):
        return x @ self.kernel + self.bias


class MLP(nnx.Module):
    def __init__(self, din: int, dmid: int, dout: int, *, rngs: nnx.Rngs):
        self.l1 = Linear(din, dmid, rngs=rngs)
        self.l2 = Linear(dmid, dout, rngs=rngs)

    def __call__(self, x):
        return self.l2(jnp.tanh(self.l1(x)))


def mlp_params(m: MLP) -> dict:
    """The same arrays as a plain params dict (for reference computations)."""
    return {
        "l1": {"kernel": m.l1.kernel[...], "bias": m.l1.bias[...]},
        "l2": {"kernel": m.l2.kernel[...], "bias": m.l2.bias[...]},
    }


def mlp_apply(p: dict, x):
    h = jnp.tanh(x @ p["l1"]["kernel"] + p["l1"]["bias"])
    return h @ p["l2"]["kernel"] + p["l2"]["bias"]


class Counter(nnx.Module):
    """A Param plus a BatchStat-like counter and running sum written every call."""

    def __init__(self, n: int = 3):
        self.w = nnx.Param(jnp.arange(1.0, n + 1.0))
        self.count = nnx.BatchStat(jnp.array(0, jnp.int32))
        self.total = nnx.BatchStat(jnp.zeros(n))

    def __call__(self, x):
        self.count[...] = self.count[...] + 1
        self.total[...] = self.total[...] + x
        return x * self.w


class Dropoutish(nnx.Module):
    """Draws a mask from the `dropout` stream of its Rngs on every call."""

    def __init__(self, rate: float, *, rngs: nnx.Rngs):
        self.rate = rate
        self.rngs = rngs

    def __call__(self, x):
        key = self.rngs.dropout()
        keep = jax.random.bernoulli(key, 1.0 - self.rate, x.shape)
        return jnp.where(keep, x / (1.0 - self.rate), 0.0)


class Boom(Exception):
    pass


def _np(x):
    if hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(x)


def snapshot(*objs):
    """(graphdef, [(path, raw leaf object, numpy copy)]) of the objects."""
    graphdef, state = nnx.split(list(objs))
    pairs = state.flat_state()
    return graphdef, [(p, nnx_raw(v), _np(nnx_raw(v))) for p, v in pairs]


def nnx_raw(v):
    return v.raw_value if isinstance(v, nnx.Variable) else v


def assert_unchanged(before, *objs):
    """The objects have exactly the structure and the same leaf objects/values as `before`."""
    graphdef, leaves = before
    g2, leaves2 = snapshot(*objs)
    assert g2 == graphdef
    assert [p for p, _, _ in leaves] == [p for p, _, _ in leaves2]
    for (p, obj, val), (_, obj2, val2) in zip(leaves, leaves2):
        assert obj2 is obj, f"leaf {p} was replaced"
        np.testing.assert_array_equal(val2, val)


def flat_raw(state) -> dict:
    """path -> raw array of a State (Variables unboxed)."""
    return {p: nnx_raw(v) for p, v in state.flat_state()}


def assert_tree_close(a, b, **kw):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb, (ta, tb)
    for x, y in zip(la, lb):
        np.testing.assert_allclose(
            np.asarray(x), np.asarray(y), rtol=kw.get("rtol", 1e-5), atol=kw.get("atol", 1e-6)
        )


def state_as_dict(state) -> dict:
    """A State of Variables -> nested dict of raw arrays (comparable with plain pytrees)."""
    return state.to_pure_dict()


def key_data(k):
    return np.asarray(jax.random.key_data(k))
