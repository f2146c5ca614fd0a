"""Every layer pickles, deepcopies and round-trips: same values, same
outputs, same GraphDef, shared sub-modules still shared (issue 13)."""

from __future__ import annotations

import copy
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxfn as nnx
from nnxfn.nn import initializers


def R():
    return nnx.Rngs(0)


X2 = jnp.linspace(-1.0, 1.0, 6).reshape(3, 2)
X6 = jnp.linspace(-1.0, 1.0, 2 * 4 * 6).reshape(2, 4, 6)
SEQ = jnp.linspace(-1.0, 1.0, 2 * 5 * 2).reshape(2, 5, 2)

LAYERS = {
    "Linear": (lambda: nnx.Linear(2, 3, rngs=R()), X2),
    "LinearGeneral": (lambda: nnx.LinearGeneral(2, (3, 4), rngs=R()), X2),
    "Einsum": (lambda: nnx.Einsum("ab,bc->ac", (2, 3), (3,), rngs=R()), X2),
    "Embed": (lambda: nnx.Embed(5, 3, rngs=R()), jnp.array([0, 4, 2])),
    "PReLU": (lambda: nnx.PReLU(), X2),
    "Conv": (lambda: nnx.Conv(6, 4, (3,), rngs=R()), X6),
    "ConvTranspose": (lambda: nnx.ConvTranspose(6, 4, (3,), rngs=R()), X6),
    "MultiHeadAttention": (lambda: nnx.MultiHeadAttention(2, 6, rngs=R(), decode=False), X6),
    "BatchNorm": (lambda: nnx.BatchNorm(6, rngs=R()), X6),
    "LayerNorm": (lambda: nnx.LayerNorm(6, rngs=R()), X6),
    "RMSNorm": (lambda: nnx.RMSNorm(6, rngs=R()), X6),
    "GroupNorm": (lambda: nnx.GroupNorm(6, num_groups=3, rngs=R()), X6),
    "InstanceNorm": (lambda: nnx.InstanceNorm(6, rngs=R()), X6),
    "SpectralNorm": (lambda: nnx.SpectralNorm(nnx.Linear(2, 3, rngs=R()), rngs=R()), X2),
    "WeightNorm": (lambda: nnx.WeightNorm(nnx.Linear(2, 3, rngs=R()), rngs=R()), X2),
    "LoRA": (lambda: nnx.LoRA(2, 2, 3, rngs=R()), X2),
    "LoRALinear": (lambda: nnx.LoRALinear(2, 3, lora_rank=2, rngs=R()), X2),
    "Dropout": (lambda: nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=3)), X6),
    "Sequential": (lambda: nnx.Sequential(nnx.Linear(2, 3, rngs=R()), nnx.relu, jnp.tanh), X2),
    "RNN-LSTM": (lambda: nnx.RNN(nnx.LSTMCell(2, 3, rngs=R())), SEQ),
    "RNN-OptimizedLSTM": (lambda: nnx.RNN(nnx.OptimizedLSTMCell(2, 3, rngs=R())), SEQ),
    "RNN-GRU": (lambda: nnx.RNN(nnx.GRUCell(2, 3, rngs=R())), SEQ),
    "RNN-Simple": (lambda: nnx.RNN(nnx.SimpleCell(2, 3, rngs=R())), SEQ),
    "Bidirectional": (
        lambda: nnx.Bidirectional(
            nnx.RNN(nnx.GRUCell(2, 3, rngs=R())), nnx.RNN(nnx.SimpleCell(2, 3, rngs=nnx.Rngs(1)))
        ),
        SEQ,
    ),
}


def leaves(m):
    out = []
    for x in jax.tree.leaves(nnx.state(m)):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        out.append(np.asarray(x))
    return out


def assert_same_values(a, b):
    la, lb = leaves(a), leaves(b)
    assert len(la) == len(lb) and la
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_layer_round_trips(name, how):
    make, x = LAYERS[name]
    model = make()
    copy_ = pickle.loads(pickle.dumps(model)) if how == "pickle" else copy.deepcopy(model)
    assert type(copy_) is type(model) and copy_ is not model
    assert nnx.graphdef(copy_) == nnx.graphdef(model)
    assert_same_values(copy_, model)
    # same outputs (and, for stateful layers, the same state afterwards)
    np.testing.assert_allclose(copy_(x), model(x), rtol=1e-6)
    assert_same_values(copy_, model)
    # independent objects: writing to the copy leaves the original alone
    first = nnx.state(copy_, nnx.Param)
    if len(first.flat_state()):
        before = leaves(model)
        nnx.update(copy_, jax.tree.map(lambda v: v + 1, first))
        assert any(not np.array_equal(o, n) for o, n in zip(before, leaves(copy_)))
        for old, new in zip(before, leaves(model)):
            np.testing.assert_array_equal(old, new)


class Tied(nnx.Module):
    def __init__(self):
        self.embed = nnx.Embed(5, 4, rngs=R())
        self.again = self.embed
        self.blocks = [nnx.Linear(4, 4, rngs=R()) for _ in range(2)]
        self.blocks.append(self.blocks[0])


def test_sharing_survives_pickle_and_deepcopy():
    model = Tied()
    for other in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert other.again is other.embed and other.blocks[2] is other.blocks[0]
        other.embed.embedding[...] = jnp.zeros((5, 4))
        np.testing.assert_array_equal(other.again.embedding[...], 0.0)
        assert float(jnp.abs(model.embed.embedding[...]).sum()) > 0


def test_initializers_pickle_and_compare_equal():
    key = jax.random.key(3)
    inits = [
        initializers.variance_scaling(2.0, "fan_in", "truncated_normal"),
        initializers.lecun_normal(),
        initializers.he_uniform(in_axis=[0], out_axis=-1),
        initializers.normal(0.5),
        initializers.uniform(),
        initializers.truncated_normal(2.0),
        initializers.constant(1.5),
        initializers.orthogonal(),
        initializers.delta_orthogonal(),
        initializers.glorot_normal(),
        initializers.xavier_uniform(),
        initializers.zeros_init(),
        initializers.ones_init(),
    ]
    shape = (3, 3, 4, 4)
    for init in inits:
        back = pickle.loads(pickle.dumps(init))
        assert back == init and hash(back) == hash(init)
        assert copy.deepcopy(init) == init
        np.testing.assert_array_equal(back(key, shape), init(key, shape))
    assert initializers.lecun_normal() == initializers.lecun_normal()
    assert initializers.normal(0.5) != initializers.normal(0.25)
    assert repr(initializers.normal(0.5)) == "normal(0.5)"
    # numbers are JAX's
    np.testing.assert_array_equal(
        initializers.variance_scaling(2.0, "fan_in", "uniform")(key, (4, 5), jnp.float16),
        jax.nn.initializers.variance_scaling(2.0, "fan_in", "uniform")(key, (4, 5), jnp.float16),
    )
    assert initializers.orthogonal(dtype=jnp.bfloat16)(key, (4, 4)).dtype == jnp.bfloat16


def test_stored_initializers_keep_graphdefs_equal():
    # Flax keeps initializers out of the layer; a layer built with other
    # initializers has the same structure.
    a = nnx.Linear(2, 3, kernel_init=initializers.zeros, rngs=R())
    b = nnx.Linear(2, 3, kernel_init=initializers.ones, rngs=R())
    assert nnx.graphdef(a) == nnx.graphdef(b)
    c1 = nnx.LSTMCell(2, 3, carry_init=initializers.normal(0.1), rngs=R())
    c2 = nnx.LSTMCell(2, 3, carry_init=initializers.normal(0.1), rngs=R())
    assert nnx.graphdef(c1) == nnx.graphdef(c2)
    back = pickle.loads(pickle.dumps(c1))
    carry = back.initialize_carry((2, 2), nnx.Rngs(carry=0))
    expected = c1.initialize_carry((2, 2), nnx.Rngs(carry=0))
    np.testing.assert_array_equal(carry[0], expected[0])
