"""Optimizer vs hand-written optax on the same pytrees."""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnxfn
from nnxfn.core import merge, split, state
from nnxfn.facade.module import Module
from nnxfn.facade.variables import BatchStat, OptArray, OptState, Param, Variable
from nnxfn.training.optimizer import ModelAndOptimizer, OptVariable, Optimizer


class LoRAParam(Param):
    pass


class Linear(Module):
    def __init__(self, din: int, dout: int, key: jax.Array, lora: bool = False):
        self.kernel = Param(jax.random.normal(key, (din, dout)) / din**0.5, out_sharding=("in", "out"))
        self.bias = Param(jnp.zeros(dout))
        if lora:
            ka, kb = jax.random.split(jax.random.fold_in(key, 1))
            self.a = LoRAParam(jax.random.normal(ka, (din, 2)))
            self.b = LoRAParam(jax.random.normal(kb, (2, dout)) * 0.1)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = x @ self.kernel + self.bias
        if hasattr(self, "a"):
            y = y + x @ self.a @ self.b
        return y


class MLP(Module):
    def __init__(self, key: jax.Array, lora: bool = False):
        k1, k2 = jax.random.split(key)
        self.layers = [Linear(3, 8, k1, lora), Linear(8, 2, k2, lora)]
        self.calls = BatchStat(jnp.array(0))

    def __call__(self, x: jax.Array) -> jax.Array:
        self.calls.value = self.calls.value + 1
        return self.layers[1](jnp.tanh(self.layers[0](x)))


X = jax.random.normal(jax.random.key(10), (16, 3))
Y = jax.random.normal(jax.random.key(11), (16, 2))


def loss_of(graphdef, rest):
    def loss(params):
        model = merge(graphdef, params, rest, copy=True)  # `rest` is closed over: copy it
        return jnp.mean((model(X) - Y) ** 2)

    return loss


def model_grads(model, wrt=Param):
    graphdef, params, rest = split(model, wrt, ...)
    return jax.grad(loss_of(graphdef, rest))(params)


def raw(tree):
    return jax.tree.map(
        lambda v: v.value if isinstance(v, Variable) else v, tree, is_leaf=lambda v: isinstance(v, Variable)
    )


def reference_run(tx, steps: int):
    """The same training with plain optax on raw pytrees."""
    model = MLP(jax.random.key(0))
    graphdef, params, rest = split(model, Param, ...)
    params = raw(params)
    opt_state = tx.init(params)
    loss = loss_of(graphdef, rest)
    for _ in range(steps):
        grads = jax.grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    return params


TXS = {
    "sgd": lambda: optax.sgd(0.1, momentum=0.9),
    "adam": lambda: optax.adam(0.05),
    "clip_adam": lambda: optax.chain(optax.clip_by_global_norm(0.5), optax.adam(0.05)),
}


@pytest.mark.parametrize("name", list(TXS))
@pytest.mark.parametrize("two_args", [False, True])
def test_matches_optax(name: str, two_args: bool):
    model = MLP(jax.random.key(0))
    optimizer = Optimizer(model, TXS[name]())
    for _ in range(5):
        grads = model_grads(model)
        optimizer.update(model, grads) if two_args else optimizer.update(grads)
    expected = reference_run(TXS[name](), 5)
    got = raw(state(model, Param))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, expected)
    assert optimizer.step.value.dtype == jnp.uint32 and int(optimizer.step.value) == 5


def test_state_layout_and_types():
    model = MLP(jax.random.key(0))
    optimizer = Optimizer(model, optax.adam(1e-3))
    assert isinstance(optimizer.step, OptState)
    adam = optimizer.opt_state[0]
    assert type(adam.count) is OptArray  # not a mirror of a parameter
    mu = adam.mu["layers"][0]["kernel"]
    assert type(mu) is OptVariable and mu.value.shape == (3, 8)
    assert mu.out_sharding == ("in", "out")  # the param's metadata is inherited
    # Flax's layout: the model is not part of the optimizer's State.
    assert set(state(optimizer).to_pure_dict()) == {"opt_state", "step"}
    assert optimizer.model is model


def test_jit_through_split_merge_one_arg_form():
    model = MLP(jax.random.key(0))
    optimizer = Optimizer(model, optax.adam(0.05))
    graphdef, st = split((model, optimizer))

    @jax.jit
    def train_step(st):
        _, opt = merge(graphdef, st)
        opt.update(model_grads(opt.model))  # the link to the model survives merge
        return split((opt.model, opt))[1]

    for _ in range(3):
        st = train_step(st)
    trained, opt = merge(graphdef, st)
    assert opt.model is trained
    expected = reference_run(optax.adam(0.05), 3)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        raw(state(trained, Param)),
        expected,
    )
    assert int(opt.step.value) == 3


def test_grads_as_raw_state_or_pure_dict():
    m1, m2 = MLP(jax.random.key(0)), MLP(jax.random.key(0))
    o1, o2 = Optimizer(m1, optax.sgd(0.1)), Optimizer(m2, optax.sgd(0.1))
    grads = model_grads(m1)
    o1.update(m1, grads)
    o2.update(m2, raw(grads).to_pure_dict())
    jax.tree.map(np.testing.assert_array_equal, raw(state(m1, Param)), raw(state(m2, Param)))


def test_wrt_lora_only():
    model = MLP(jax.random.key(0), lora=True)
    before = raw(state(model))
    optimizer = Optimizer(model, optax.adam(0.1), wrt=LoRAParam)
    assert set(state(optimizer.opt_state[0].mu).to_pure_dict()["layers"][0]) == {"a", "b"}
    for _ in range(3):
        optimizer.update(model, model_grads(model))  # grads for every Param: non-LoRA dropped
    after = raw(state(model))
    for i in range(2):
        layer0, layer1 = before["layers"][i], after["layers"][i]
        np.testing.assert_array_equal(layer0["kernel"], layer1["kernel"])
        np.testing.assert_array_equal(layer0["bias"], layer1["bias"])
        assert not np.allclose(layer0["a"], layer1["a"])


def test_wrt_lora_matches_optax():
    model = MLP(jax.random.key(0), lora=True)
    graphdef, lora, rest = split(model, LoRAParam, ...)
    tx = optax.adam(0.1)
    params, opt_state = raw(lora), tx.init(raw(lora))
    loss = loss_of(graphdef, rest)
    optimizer = Optimizer(model, optax.adam(0.1), wrt=LoRAParam)
    for _ in range(3):
        updates, opt_state = tx.update(jax.grad(loss)(params), opt_state, params)
        params = optax.apply_updates(params, updates)
        optimizer.update(model, model_grads(model, LoRAParam))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        raw(state(model, LoRAParam)),
        params,
    )


def test_inject_hyperparams_read_write():
    model = MLP(jax.random.key(0))
    optimizer = Optimizer(model, optax.inject_hyperparams(optax.sgd)(learning_rate=0.1))
    hp = optimizer.opt_state.hyperparams
    assert float(hp["learning_rate"].value) == pytest.approx(0.1)
    assert optimizer.learning_rate is hp["learning_rate"]

    hp["learning_rate"].value = 0.0
    before = raw(state(model, Param))
    optimizer.update(model_grads(model))
    jax.tree.map(np.testing.assert_array_equal, raw(state(model, Param)), before)

    optimizer.learning_rate = 0.2  # the shortcut writes the same Variable
    assert float(hp["learning_rate"].value) == pytest.approx(0.2)
    grads = model_grads(model)
    optimizer.update(grads)
    expected = jax.tree.map(lambda p, g: p - 0.2 * g, before, raw(grads))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), raw(state(model, Param)), expected)


def test_no_hyperparams_error():
    optimizer = Optimizer(MLP(jax.random.key(0)), optax.sgd(0.1))
    with pytest.raises(AttributeError, match="inject_hyperparams"):
        optimizer.hyperparams


def test_kwargs_forwarded_to_linesearch():
    model = MLP(jax.random.key(0))
    graphdef, params, rest = split(model, Param, ...)
    loss = loss_of(graphdef, rest)
    tx = optax.lbfgs()
    p, s = raw(params), tx.init(raw(params))
    optimizer = Optimizer(model, optax.lbfgs())
    for _ in range(3):
        value, grad = jax.value_and_grad(loss)(p)
        updates, s = tx.update(grad, s, p, value=value, grad=grad, value_fn=loss)
        p = optax.apply_updates(p, updates)
        mvalue, mgrads = jax.value_and_grad(loss)(state(model, Param))
        optimizer.update(model, mgrads, value=mvalue, grad=mgrads, value_fn=loss)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), raw(state(model, Param)), p
    )


def test_grads_path_mismatch_errors():
    model = MLP(jax.random.key(0))
    optimizer = Optimizer(model, optax.sgd(0.1))
    grads = raw(model_grads(model)).to_pure_dict()
    missing = {"layers": {0: grads["layers"][0]}}
    with pytest.raises(
        ValueError, match=r"missing from grads: model\.layers\[1\]\.bias, model\.layers\[1\]\.kernel"
    ):
        optimizer.update(missing)
    extra = {**grads, "extra": jnp.ones(2)}
    with pytest.raises(ValueError, match=r"in grads but not trained: model\.extra"):
        optimizer.update(extra)
    with pytest.raises(TypeError, match="must be a State"):
        optimizer.update([1.0])
    with pytest.raises(TypeError, match=r"takes `\(grads\)` or `\(model, grads\)`"):
        optimizer.update(model, grads, grads)


def test_model_and_optimizer():
    model = MLP(jax.random.key(0))
    mo = ModelAndOptimizer(model, optax.adam(0.05), wrt=Param)
    for _ in range(2):
        mo.update(model_grads(mo.model))
    expected = reference_run(optax.adam(0.05), 2)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        raw(state(mo.model, Param)),
        expected,
    )


# -- the model link: update(grads) finds the right model, the State stays Flax's -------
def _train_step(model, optimizer):
    grads = nnxfn.grad(lambda m: jnp.mean((m(X) - Y) ** 2))(model)
    optimizer.update(grads)
    return jnp.mean((model(X) - Y) ** 2)


def test_one_arg_update_inside_nnx_jit_trains_the_passed_model():
    model = MLP(jax.random.key(0))
    optimizer = Optimizer(model, optax.adam(0.05))
    step = nnxfn.jit(_train_step)
    losses = [float(step(model, optimizer)) for _ in range(5)]
    assert losses[-1] < losses[0]
    expected = reference_run(optax.adam(0.05), 5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        raw(state(model, Param)),
        expected,
    )
    assert int(optimizer.step.value) == 5 and optimizer.model is model
    # the arguments in the other order: the link follows the objects, not positions
    flipped = nnxfn.jit(lambda opt, m: _train_step(m, opt))
    flipped(optimizer, model)
    assert int(optimizer.step.value) == 6


def test_one_arg_update_without_the_model_in_the_transform_raises():
    model = MLP(jax.random.key(0))
    optimizer = Optimizer(model, optax.sgd(0.1))
    before = raw(state(model))

    @nnxfn.jit
    def step(optimizer, grads):
        optimizer.update(grads)

    with pytest.raises(TypeError, match=r"does not know its model here.*optimizer\.update\(model, grads\)"):
        step(optimizer, model_grads(model))
    jax.tree.map(np.testing.assert_array_equal, raw(state(model)), before)
    assert int(optimizer.step.value) == 0


def test_link_kept_by_clone_and_deepcopy_dropped_by_split_alone():
    model = MLP(jax.random.key(0))
    optimizer = Optimizer(model, optax.sgd(0.1))
    m2, o2 = nnxfn.clone((model, optimizer))
    assert o2.model is m2 and m2 is not model
    m3, o3 = copy.deepcopy((model, optimizer))
    assert o3.model is m3
    o2.update(model_grads(m2))  # trains the clone only
    assert not np.allclose(m2.layers[0].kernel.value, model.layers[0].kernel.value)

    alone = merge(*split(optimizer))
    with pytest.raises(AttributeError, match="does not know its model here"):
        alone.model
    with pytest.raises(TypeError, match="does not know its model here"):
        alone.update(model_grads(model))
    alone.update(model, model_grads(model))  # Flax's form works
    assert int(alone.step.value) == 1


# -- no silent failures ------------------------------------------------------------------
def test_wrt_matching_nothing_raises():
    model = MLP(jax.random.key(0))
    with pytest.raises(
        ValueError,
        match=(
            r"wrt='params' matches none of the model's Variables.*holds: BatchStat x1, Param x4"
            r".*selects Variables by \*tag\*.*wrt=nnx\.Param"
        ),
    ):
        Optimizer(model, optax.adam(1e-3), wrt="params")
    with pytest.raises(ValueError, match=r"wrt=<class '.*LoRAParam'> matches none"):
        Optimizer(model, optax.adam(1e-3), wrt=LoRAParam)


def test_grads_matching_no_trained_variable_raise():
    model = MLP(jax.random.key(0))
    optimizer = Optimizer(model, optax.sgd(0.1))
    stats = state(model, BatchStat)  # e.g. gradients taken w.r.t. the wrong Variables
    with pytest.raises(
        ValueError,
        match=r"none of the grads match a Variable this optimizer "
        r"trains(.|\n)*grads: model\.calls",
    ):
        optimizer.update(model, stats)
    assert int(optimizer.step.value) == 0


def test_wrong_shapes_raise_naming_each_path_and_write_nothing():
    model = MLP(jax.random.key(0))
    optimizer = Optimizer(model, optax.adam(0.1))
    before, opt_before = raw(state(model)), raw(state(optimizer))
    grads = raw(model_grads(model)).to_pure_dict()
    grads["layers"][1]["kernel"] = jnp.ones((8, 1))  # broadcasts against (8, 2)
    grads["layers"][1]["bias"] = jnp.ones((3,))  # does not broadcast
    with pytest.raises(
        ValueError,
        match=(
            r"nothing was updated\.\n"
            r"  model\.layers\[1\]\.bias: gradient float32\[3\], parameter float32\[2\]\n"
            r"  model\.layers\[1\]\.kernel: gradient float32\[8,1\], parameter float32\[8,2\]"
        ),
    ):
        optimizer.update(model, grads)
    jax.tree.map(np.testing.assert_array_equal, raw(state(model)), before)
    jax.tree.map(np.testing.assert_array_equal, raw(state(optimizer)), opt_before)
    grads = raw(model_grads(model)).to_pure_dict()
    grads["layers"][0]["bias"] = jnp.ones(8, jnp.int32)
    with pytest.raises(ValueError, match=r"layers\[0\]\.bias: gradient int32\[8\], parameter float32\[8\]"):
        optimizer.update(model, grads)
    grads["layers"][0]["bias"] = jnp.ones(8, jnp.bfloat16)  # another float precision is fine
    optimizer.update(model, grads)
    assert model.layers[0].bias.value.dtype == jnp.float32


def test_raw_grads_outside_wrt_are_dropped():
    model = MLP(jax.random.key(0), lora=True)
    optimizer = Optimizer(model, optax.sgd(0.1), wrt=LoRAParam)
    before = raw(state(model))
    grads = raw(model_grads(model, Param)).to_pure_dict()  # raw arrays for every Param
    optimizer.update(model, grads)
    after = raw(state(model))
    np.testing.assert_array_equal(after["layers"][0]["kernel"], before["layers"][0]["kernel"])
    assert not np.allclose(after["layers"][0]["a"], before["layers"][0]["a"])


def test_checks_run_at_trace_time_only(monkeypatch):
    from nnxfn.training import optimizer as optimizer_module

    calls = []
    real = optimizer_module.match_grads
    monkeypatch.setattr(optimizer_module, "match_grads", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = MLP(jax.random.key(0))
    optimizer = Optimizer(model, optax.adam(0.05))
    step = nnxfn.jit(_train_step)
    for _ in range(4):
        step(model, optimizer)
    assert len(calls) == 1 and int(optimizer.step.value) == 4


def test_optimizer_sharding_annotates_the_moments():
    mesh = jax.make_mesh((1, 1), ("row", "col"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    model = Linear(4, 2, jax.random.key(0))
    model.kernel.set_metadata(out_sharding=(None, "col"), optimizer_sharding=("row", "col"))
    with jax.set_mesh(mesh):
        optimizer = Optimizer(model, optax.adam(1e-3))
    mu = optimizer.opt_state[0].mu["kernel"]
    assert mu.get_metadata("out_sharding") == ("row", "col")
    assert model.kernel.get_metadata("out_sharding") == (None, "col")
    assert "optimizer_sharding" not in mu.get_metadata()
    assert mu.value.sharding.spec == jax.sharding.PartitionSpec("row", "col")


def test_update_a_state_of_variables_in_place():
    model = MLP(jax.random.key(0))
    params = state(model, Param)
    optimizer = Optimizer(params, optax.sgd(0.5))
    grads = model_grads(model)
    before = raw(params)
    optimizer.update(params, grads)
    expected = jax.tree.map(lambda p, g: p - 0.5 * g, before, raw(grads))
    jax.tree.map(np.testing.assert_allclose, raw(params), expected)


def test_optimizer_built_inside_a_transform_links_to_the_callers_model():
    model = MLP(jax.random.key(0))
    optimizer = nnxfn.jit(lambda m: Optimizer(m, optax.sgd(0.1)))(model)
    assert optimizer.model is model and int(optimizer.step.value) == 0

    def build():
        m = MLP(jax.random.key(1))
        return m, Optimizer(m, optax.adam(0.1))

    abstract_model, abstract_opt = nnxfn.eval_shape(build)
    assert abstract_opt.model is abstract_model
    assert isinstance(abstract_opt.opt_state[0].mu["layers"][0]["kernel"].value, jax.ShapeDtypeStruct)


def test_hijax_model_and_optimizer_train_under_plain_jax_jit():
    # hijax Variables keep their values in jax.Refs: the optimizer reads the
    # values (not the Refs) and writes into them, so a plain `jax.jit` trains.
    with nnxfn.var_defaults(hijax=True):
        model = nnxfn.Linear(2, 3, rngs=nnxfn.Rngs(0))
        optimizer = Optimizer(model, optax.sgd(0.5), wrt=Param)
    w0, b0 = np.asarray(model.kernel[...]), np.asarray(model.bias[...])
    x, y = jnp.ones((4, 2)), jnp.zeros((4, 3))

    @jax.jit
    def step(x, y):
        graphdef, params, rest = nnxfn.split(model, Param, ...)

        def loss_fn(p):
            return ((nnxfn.merge(graphdef, p, rest)(x) - y) ** 2).mean()

        grads = jax.grad(loss_fn)(nnxfn.with_vars(params, hijax=False))
        optimizer.update(model, grads)

    step(x, y)
    pred = x @ w0 + b0
    g_b = (2 * (pred - y) / pred.size).sum(0)
    g_w = x.T @ (2 * (pred - y) / pred.size)
    np.testing.assert_allclose(model.bias[...], b0 - 0.5 * g_b, rtol=1e-5)
    np.testing.assert_allclose(model.kernel[...], w0 - 0.5 * g_w, rtol=1e-5)
    assert int(optimizer.step[...]) == 1


def test_hijax_moments_are_hijax_and_train_under_plain_jax_jit():
    # Adam's moments mirror hijax Params, so they are hijax too (as in Flax):
    # the update inside a plain `jax.jit` writes them through their Refs.
    with nnxfn.var_defaults(hijax=True):
        model = MLP(jax.random.key(0))
        optimizer = Optimizer(model, TXS["adam"]())
    moments = [
        v for v in jax.tree.leaves(optimizer.opt_state, is_leaf=_is_variable) if isinstance(v, OptVariable)
    ]
    assert len(moments) == 8 and all(v.hijax for v in moments)

    @jax.jit
    def step():
        graphdef, params, rest = split(model, Param, ...)
        grads = jax.grad(loss_of(graphdef, rest))(nnxfn.with_vars(params, hijax=False))
        optimizer.update(model, grads)

    for _ in range(3):
        step()
    want = reference_run(TXS["adam"](), 3)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), raw(state(model, Param)), want)
    assert int(optimizer.step[...]) == 3


def _is_variable(x):
    return isinstance(x, Variable)


def test_optimizer_sharding_without_a_param_annotation():
    # the moment gets `out_sharding` metadata; `.sharding` stays the array's sharding
    mesh = jax.make_mesh((1, 1), ("row", "col"), axis_types=(jax.sharding.AxisType.Auto,) * 2)

    class Plain(Module):
        def __init__(self):
            self.w = Param(jnp.ones((4, 2)), optimizer_sharding=("row", "col"))

    model = Plain()
    with jax.set_mesh(mesh):
        optimizer = Optimizer(model, optax.adam(1e-3))
    mu = optimizer.opt_state[0].mu["w"]
    assert mu.get_metadata("out_sharding") == ("row", "col")
    assert mu.sharding.spec == jax.sharding.PartitionSpec("row", "col")
    assert "out_sharding" not in model.w.get_metadata()
