"""The examples of why_nnx.md with `from flax import nnx` -> `import nnxfn as nnx`.

`nnx.Linear`/`nnx.BatchNorm`/`nnx.Dropout` are written in parallel under
`nnxfn.nn`; until then small test-local layers with Flax's attribute names
stand in for them.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax import random

import nnxfn as nnx

relu = jax.nn.relu


# -- stand-ins for nnx.Linear / nnx.BatchNorm / nnx.Dropout -------------------------
class Linear(nnx.Module):
    def __init__(self, in_features, out_features, *, rngs):
        self.kernel = nnx.Param(random.normal(rngs.params(), (in_features, out_features)) * 0.5)
        self.bias = nnx.Param(jnp.zeros((out_features,)))
        self.in_features, self.out_features = in_features, out_features

    def __call__(self, x):
        return x @ self.kernel + self.bias


class BatchNorm(nnx.Module):
    def __init__(self, num_features, *, momentum=0.9, epsilon=1e-5, rngs=None):
        self.scale = nnx.Param(jnp.ones((num_features,)))
        self.bias = nnx.Param(jnp.zeros((num_features,)))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,)))
        self.var = nnx.BatchStat(jnp.ones((num_features,)))
        self.momentum, self.epsilon = momentum, epsilon
        self.use_running_average = False

    def __call__(self, x):
        if self.use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            mean, var = x.mean(0), x.var(0)
            self.mean[...] = self.momentum * self.mean + (1 - self.momentum) * mean
            self.var[...] = self.momentum * self.var + (1 - self.momentum) * var
        return (x - mean) / jnp.sqrt(var + self.epsilon) * self.scale + self.bias


class Dropout(nnx.Module):
    def __init__(self, rate, *, rngs):
        self.rate = rate
        self.deterministic = False
        self.rngs = rngs

    def __call__(self, x):
        if self.deterministic or self.rate == 0:
            return x
        keep = random.bernoulli(self.rngs.dropout(), 1 - self.rate, x.shape)
        return jnp.where(keep, x / (1 - self.rate), 0)


def _eq(a, b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


# -- Inspection -------------------------------------------------------------------------
def test_inspection():
    class Block(nnx.Module):
        def __init__(self, rngs):
            self.linear = Linear(5, 10, rngs=rngs)

    block = Block(nnx.Rngs(0))
    text = repr(block.linear)
    assert text.startswith("Linear(")
    assert "kernel=Param(\n" in text and "value=Array(shape=(5, 10), dtype=float32)" in text
    assert "bias=Param(\n" in text and "value=Array(shape=(10,), dtype=float32)" in text
    assert block.linear.kernel.shape == (5, 10)
    assert block.linear.in_features == 5 and block.linear.out_features == 10


# -- Running computation ---------------------------------------------------------------
def test_running_computation():
    Encoder = lambda rngs: Linear(2, 10, rngs=rngs)  # noqa: E731
    Decoder = lambda rngs: Linear(10, 2, rngs=rngs)  # noqa: E731

    class AutoEncoder(nnx.Module):
        def __init__(self, rngs):
            self.encoder = Encoder(rngs)
            self.decoder = Decoder(rngs)

        def __call__(self, x) -> jax.Array:
            return self.decoder(self.encoder(x))

        def encode(self, x) -> jax.Array:
            return self.encoder(x)

    x = jnp.ones((1, 2))
    model = AutoEncoder(nnx.Rngs(0))
    y = model(x)
    z = model.encode(x)
    y2 = model.decoder(z)
    assert y.shape == (1, 2) and z.shape == (1, 10)
    _eq(y, y2)
    _close(z, x @ model.encoder.kernel[...] + model.encoder.bias[...])
    # encoder and decoder drew different keys from the shared Rngs
    assert not np.allclose(
        np.asarray(model.encoder.kernel[...][:, :2]), np.asarray(model.decoder.kernel[...][:2, :].T)
    )


# -- State handling ----------------------------------------------------------------------
class Block(nnx.Module):
    def __init__(self, rngs):
        self.linear = Linear(5, 10, rngs=rngs)
        self.bn = BatchNorm(10, rngs=rngs)
        self.dropout = Dropout(0.1, rngs=rngs)

    def __call__(self, x):
        return relu(self.dropout(self.bn(self.linear(x))))


def test_state_handling_block_just_works():
    x = jnp.arange(10.0).reshape(2, 5) / 5
    model = Block(nnx.Rngs(0))
    y1 = model(x)
    assert y1.shape == (2, 10)
    assert float(jnp.abs(model.bn.mean[...]).sum()) > 0  # running stats updated in place
    count = int(model.dropout.rngs.default.count[...])
    y2 = model(x)
    assert int(model.dropout.rngs.default.count[...]) == count + 1  # a fresh key per call
    assert not np.array_equal(np.asarray(y1), np.asarray(y2))
    model.eval()
    stats = model.bn.mean[...]
    e1, e2 = model(x), model(x)
    _eq(e1, e2)
    _eq(model.bn.mean[...], stats)


def test_state_handling_through_split_merge_jit():
    """The training code does not change when a stateful layer is added."""
    model = Block(nnx.Rngs(0))
    x = jnp.arange(10.0).reshape(2, 5)
    graphdef, state = nnx.split(model)
    reference = nnx.clone(model)  # `state` holds the model's own Variables: updated below

    @jax.jit
    def step(state, x):
        m = nnx.merge(graphdef, state)
        y = m(x)
        return y, nnx.state(m)

    y, new_state = step(state, x)
    nnx.update(model, new_state)
    _close(reference(x), y)
    _close(model.bn.mean[...], reference.bn.mean[...])
    assert int(model.dropout.rngs.default.count[...]) == int(reference.dropout.rngs.default.count[...])


class DocBatchNorm(nnx.Module):
    """The simplified BatchNorm of why_nnx.md, verbatim."""

    def __init__(self, features: int, mu: float = 0.95):
        # Variables
        self.scale = nnx.Param(jax.numpy.ones((features,)))
        self.bias = nnx.Param(jax.numpy.zeros((features,)))
        self.mean = nnx.BatchStat(jax.numpy.zeros((features,)))
        self.var = nnx.BatchStat(jax.numpy.ones((features,)))
        self.mu = mu  # Static

    def __call__(self, x):
        mean = jax.numpy.mean(x, axis=-1)
        var = jax.numpy.var(x, axis=-1)
        # ema updates
        self.mean.value = self.mu * self.mean + (1 - self.mu) * mean
        self.var.value = self.mu * self.var + (1 - self.mu) * var
        # normalize and scale
        x = (x - mean) / jax.numpy.sqrt(var + 1e-5)
        return x * self.scale + self.bias


def test_doc_batchnorm_updates_statistics():
    bn = DocBatchNorm(4)
    x = jnp.array([1.0, 2.0, 3.0, 6.0])
    y = bn(x)
    m, v = x.mean(), x.var()
    _close(bn.mean[...], jnp.full(4, 0.05 * m))
    _close(bn.var[...], jnp.full(4, 0.95 + 0.05 * v))
    _close(y, (x - m) / jnp.sqrt(v + 1e-5))
    assert type(bn.mean) is nnx.BatchStat  # still the same kind of Variable
    bn(x)
    _close(bn.mean[...], jnp.full(4, 0.95 * 0.05 * m + 0.05 * m))
    graphdef, params, stats = nnx.split(bn, nnx.Param, nnx.BatchStat)
    assert set(stats) == {"mean", "var"} and set(params) == {"scale", "bias"}
    assert dict(nnx.graphdef(bn).root.children)["mu"].value == 0.95  # mu is static


# -- Model surgery ----------------------------------------------------------------------
class LoraParam(nnx.Param):
    pass


class LoraLinear(nnx.Module):
    def __init__(self, linear, rank, rngs):
        self.linear = linear
        self.A = LoraParam(random.normal(rngs(), (linear.in_features, rank)))
        self.B = LoraParam(random.normal(rngs(), (rank, linear.out_features)))

    def __call__(self, x: jax.Array):
        return self.linear(x) + x @ self.A @ self.B


def test_model_surgery_replace_one_layer():
    rngs = nnx.Rngs(0)
    model = Block(rngs)
    model.eval()
    x = jnp.arange(10.0).reshape(2, 5) / 10
    base = model.linear
    before = base(x)
    model.linear = LoraLinear(model.linear, rank=5, rngs=rngs)
    assert isinstance(model.linear, LoraLinear) and model.linear.linear is base
    lora = model.linear
    _close(lora(x), before + x @ lora.A[...] @ lora.B[...])
    assert lora.A.shape == (5, 5) and lora.B.shape == (5, 10)
    lora_state = nnx.state(model, LoraParam)
    assert {p for p, _ in lora_state.flat_state()} == {("linear", "A"), ("linear", "B")}
    assert ("linear", "linear", "kernel") in nnx.state(model, nnx.Param).flat_dict()
    # the whole model still runs, and a split/merge keeps the new structure
    y = model(x)
    new = nnx.merge(*nnx.split(model))
    assert isinstance(new.linear, LoraLinear)
    _close(new(x), y)


class Tower(nnx.Module):
    def __init__(self, rngs):
        self.first = Linear(4, 4, rngs=rngs)
        self.block = Block(rngs)  # holds a Linear too
        self.inner = nnx.Module()
        self.inner.proj = Linear(4, 3, rngs=rngs)
        self.inner.again = self.first  # shared: replaced once, everywhere it is reachable from inner
        self.bn = BatchNorm(4)


def test_model_surgery_iter_graph_replaces_every_linear():
    rngs = nnx.Rngs(0)
    model = Tower(rngs)
    originals = {id(m): m for _, m in nnx.iter_graph(model) if isinstance(m, Linear)}
    assert len(originals) == 3
    x = jnp.ones((2, 4))
    base_first = model.first(x)
    for _path, module in nnx.iter_graph(model):
        if isinstance(module, nnx.Module):
            for name, value in vars(module).items():
                if isinstance(value, Linear):
                    setattr(module, name, LoraLinear(value, rank=5, rngs=rngs))
    loras = [(p, m) for p, m in nnx.iter_graph(model) if isinstance(m, LoraLinear)]
    # every attribute that held a Linear now holds a LoraLinear wrapping it
    assert isinstance(model.first, LoraLinear)
    assert isinstance(model.block.linear, LoraLinear)
    assert isinstance(model.inner.proj, LoraLinear)
    assert isinstance(model.inner.again, LoraLinear)
    wrapped = [m.linear for _, m in loras]
    assert all(type(w) is Linear for w in wrapped)  # nothing wrapped twice
    assert {id(w) for w in wrapped} == set(originals)
    assert not isinstance(model.bn, LoraLinear) and not isinstance(model.block.bn, LoraLinear)
    # each LoraLinear computes base + x @ A @ B
    f = model.first
    _close(f(x), base_first + x @ f.A[...] @ f.B[...])
    params = nnx.state(model, LoraParam)
    assert len(params.flat_state()) == 2 * len(loras)
