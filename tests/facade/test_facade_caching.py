"""The facade's memos only save work: with caching off (`NNXFN_CACHE=0`, or
`caches.caching(False)`) flatten, unflatten, `jax.jit` and `nnx.jit` round
trips give the same leaves, key paths, tree structures and updated states as
with caching on, and the facade's caches stay empty."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np

import nnxfn as nnx
from nnxfn.core import caches


class Block(nnx.Module):
    def __init__(self, rngs):
        self.lin = nnx.Linear(3, 3, rngs=rngs)
        self.norm = nnx.BatchNorm(3, rngs=rngs)
        self.act = "relu"  # static
        self.extra = [jnp.arange(3.0), "tag"]  # a mixed plain list

    def __call__(self, x):
        return jax.nn.relu(self.norm(self.lin(x))) + self.extra[0]


class Net(nnx.Module):
    def __init__(self, seed):
        rngs = nnx.Rngs(seed)
        self.blocks = nnx.List([Block(rngs) for _ in range(3)])
        self.tied = self.blocks[0].lin  # shared: this Net is flattened whole
        self.head = nnx.Linear(3, 2, rngs=rngs)

    def __call__(self, x):
        for b in self.blocks:
            x = b(x)
        return self.head(self.tied(x))


X = jnp.linspace(-1.0, 1.0, 12).reshape(4, 3)


def _facade_entries() -> int:
    return sum(len(c) for c in caches.all_caches() if c.name.startswith("facade."))


def _round_trips(seed: int) -> dict:
    """Every flatten/unflatten/jit result of one fresh model, as numpy values."""
    model = Net(seed)
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(model)
    leaves = [np.asarray(x) for _, x in paths_leaves]
    paths = [jax.tree_util.keystr(p) for p, _ in paths_leaves]
    rebuilt = jax.tree.unflatten(treedef, jax.tree.leaves(model))
    assert rebuilt.tied is rebuilt.blocks[0].lin  # the sharing is rebuilt
    again = jax.tree.structure(rebuilt)
    inner = jax.tree_util.tree_flatten_with_path(model.blocks[1])

    @jax.jit
    def scaled(m):
        return jax.tree.map(lambda v: v * 2.0, m)

    doubled = scaled(model)
    doubled_twice = scaled(doubled)  # flattens a model built by a JAX unflatten

    @nnx.jit
    def train_step(m, x):  # an SGD step written into `m`; BatchNorm updates its statistics
        loss, grads = nnx.value_and_grad(lambda m: jnp.sum(m(x) ** 2))(m)
        params = nnx.state(m, nnx.Param)
        nnx.update(m, jax.tree.map(lambda p, g: p - 0.01 * g, params, grads))
        return loss

    losses = [float(train_step(model, X)) for _ in range(3)]
    model.blocks[2].act = "gelu"  # a structural change between calls
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the retrace is expected
        losses.append(float(train_step(model, X)))
    _, state = nnx.split(model)
    return {
        "paths": paths,
        "leaves": leaves,
        "treedef_stable": treedef == again,
        "inner_paths": [jax.tree_util.keystr(p) for p, _ in inner[0]],
        "num_leaves": (treedef.num_leaves, inner[1].num_leaves),
        "doubled": [np.asarray(x) for x in jax.tree.leaves(doubled)],
        "doubled_twice": [np.asarray(x) for x in jax.tree.leaves(doubled_twice)],
        "losses": losses,
        "state": [np.asarray(x) for x in jax.tree.leaves(state)],
    }


def _assert_same(on: dict, off: dict) -> None:
    assert on.keys() == off.keys()
    for key in on:
        a, b = on[key], off[key]
        if isinstance(a, list) and a and isinstance(a[0], np.ndarray):
            assert len(a) == len(b), key
            for x, y in zip(a, b):
                np.testing.assert_array_equal(x, y, err_msg=key)
        else:
            assert a == b, key


def test_round_trips_are_the_same_with_caching_off_and_on():
    with caches.caching(True):
        on = _round_trips(seed=3)
        assert _facade_entries() > 0  # the memos were used
    with caches.caching(False):
        off = _round_trips(seed=3)
        assert _facade_entries() == 0  # nothing was kept
    _assert_same(on, off)
    assert on["treedef_stable"] is True
    # the SGD steps were written back, so the losses went down
    assert on["losses"][1] < on["losses"][0]
    # doubling through jax.jit doubled every leaf
    for x, y in zip(on["leaves"], on["doubled"]):
        np.testing.assert_allclose(y, 2.0 * x, rtol=1e-6)


def test_memos_made_with_caching_on_are_not_trusted_after_switching_off():
    model = Net(0)
    with caches.caching(True):
        before = jax.tree.leaves(model)  # memos stamped on the objects
    with caches.caching(False):
        model.blocks[0].lin.kernel.value = model.blocks[0].lin.kernel.value + 1.0
        model.blocks[1].extra.append(jnp.ones(3))  # an in-place list edit
        after = jax.tree_util.tree_flatten_with_path(model)[0]
    assert len(after) == len(before) + 1
    assert any("extra[2]" in jax.tree_util.keystr(p) for p, _ in after)
