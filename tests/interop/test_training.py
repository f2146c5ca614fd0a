"""Point 2: training Equinox weights held by nnxfn Modules."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import nnxfn as nnx

KEY = jax.random.key(0)


class Net(nnx.Module):
    """An Equinox MLP encoder with an nnxfn Linear head."""

    def __init__(self, rngs: nnx.Rngs):
        self.mlp = eqx.nn.MLP(3, 8, 16, 1, key=KEY)
        self.head = nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, x):
        return self.head(jax.vmap(self.mlp)(x))[:, 0]


def _data():
    x = jax.random.normal(jax.random.key(1), (32, 3))
    return x, jnp.sin(x[:, 0]) + x[:, 1] * x[:, 2]


def _loss(model, x, y):
    return ((model(x) - y) ** 2).mean()


def test_nnx_jit_optimizer_trains_equinox_weights():
    model = Net(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2))  # default wrt=Param
    x, y = _data()
    mlp0 = model.mlp
    w0 = np.asarray(model.mlp.layers[0].weight)
    k0 = np.asarray(model.head.kernel[...])

    @nnx.jit
    def step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(_loss)(model, x, y)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer, x, y)) for _ in range(30)]
    assert losses[-1] < 0.7 * losses[0]
    assert all(b < a for a, b in zip(losses[:10], losses[1:11]))  # each step uses the new weights
    assert model.mlp is not mlp0  # documented: the immutable Equinox module is rebuilt
    assert type(model.mlp) is eqx.nn.MLP and isinstance(model.mlp.layers[0].weight, jax.Array)
    assert not np.allclose(model.mlp.layers[0].weight, w0)
    assert not np.allclose(model.head.kernel[...], k0)
    assert int(optimizer.step[...]) == 30
    np.testing.assert_allclose(float(_loss(model, x, y)), float(step(model, optimizer, x, y)), rtol=1e-5)


def test_eager_grad_and_update_match_jit():
    x, y = _data()
    a, b = Net(nnx.Rngs(0)), Net(nnx.Rngs(0))
    opt_a, opt_b = nnx.Optimizer(a, optax.sgd(0.1)), nnx.Optimizer(b, optax.sgd(0.1))
    for _ in range(2):
        opt_a.update(a, nnx.grad(_loss)(a, x, y))
        nnx.jit(lambda m, o: o.update(m, nnx.grad(_loss)(m, x, y)))(b, opt_b)
    np.testing.assert_allclose(a.mlp.layers[1].weight, b.mlp.layers[1].weight, rtol=1e-5, atol=1e-6)


def test_grads_equal_eqx_filter_grad():
    model = Net(nnx.Rngs(0))
    x, y = _data()
    grads = nnx.grad(_loss)(model, x, y)
    ref = eqx.filter_grad(lambda mlp, head, x, y: ((head(jax.vmap(mlp)(x))[:, 0] - y) ** 2).mean())(
        model.mlp, model.head, x, y
    )
    for i in range(2):
        for field in ("weight", "bias"):
            got = grads["mlp"]["layers"][i][field]
            assert type(got) is nnx.Param
            np.testing.assert_allclose(got[...], getattr(ref.layers[i], field), rtol=1e-5, atol=1e-7)
    # the same through eqx.filter_grad on the whole nnxfn model (a pytree)
    whole = eqx.filter_grad(_loss)(model, x, y)
    np.testing.assert_allclose(whole.mlp.layers[0].weight, ref.layers[0].weight, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(whole.head.kernel[...], grads["head"]["kernel"][...], rtol=1e-5, atol=1e-7)


def test_optimizer_update_rebuilds_nested_equinox_modules_in_lists():
    class Stack(nnx.Module):
        def __init__(self):
            self.blocks = [eqx.nn.Linear(2, 2, key=k) for k in jax.random.split(KEY, 2)]

        def __call__(self, x):
            for b in self.blocks:
                x = jax.vmap(b)(x)
            return x

    m = Stack()
    first = m.blocks[1]
    opt = nnx.Optimizer(m, optax.sgd(0.5))
    x = jnp.ones((4, 2))
    opt.update(m, nnx.grad(lambda m: (m(x) ** 2).sum())(m))
    assert m.blocks[1] is not first and type(m.blocks[1]) is eqx.nn.Linear
    assert not np.allclose(m.blocks[1].weight, first.weight)


class BNNet(nnx.Module):
    def __init__(self):
        self.lin = eqx.nn.Linear(3, 4, key=KEY)
        self.bn, self.state = eqx.nn.make_with_state(eqx.nn.BatchNorm)(4, "batch", mode="batch")

    def __call__(self, x):
        h = jax.vmap(self.lin)(x)
        bn = jax.vmap(self.bn, axis_name="batch", in_axes=(0, None), out_axes=(0, None))
        y, self.state = bn(h, self.state)  # a plain call updates the statistics
        return y


def _stats(state):
    return [np.asarray(v) for v in jax.tree.leaves(state)]


def test_equinox_batchnorm_state_updates_through_plain_calls():
    m = BNNet()
    x = jax.random.normal(KEY, (16, 3)) * 3 + 1
    before = _stats(m.state)
    m(x)
    eager = _stats(m.state)
    assert any(not np.allclose(a, b) for a, b in zip(before, eager))

    j = BNNet()
    f = nnx.jit(lambda m, x: m(x))
    f(j, x)
    for a, b in zip(_stats(j.state), eager):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    f(j, x)  # the second call starts from the committed statistics
    m(x)
    for a, b in zip(_stats(j.state), _stats(m.state)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert type(j.state) is eqx.nn.State


def test_batchnorm_stats_are_not_trained():
    m = BNNet()
    opt = nnx.Optimizer(m, optax.adam(1e-1))
    x = jax.random.normal(KEY, (16, 3))

    @nnx.jit
    def step(m, opt, x):
        loss, grads = nnx.value_and_grad(lambda m: (m(x) ** 2).mean())(m)
        assert all(p[0] != "state" for p, _ in grads.flat_state())
        opt.update(m, grads)
        return loss

    w0 = np.asarray(m.bn.weight)
    step(m, opt, x)
    step(m, opt, x)
    assert not np.allclose(m.bn.weight, w0)
    opt_paths = [p for p, _ in nnx.state(opt.opt_state).flat_state()]
    assert any("bn" in p for p in opt_paths) and not any("state" in p for p in opt_paths)
