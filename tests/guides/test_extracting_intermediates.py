"""The behaviour shown in Flax's `guides/extracting_intermediates`, run with `import nnxfn as nnx`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import nnxfn as nnx


class Foo(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs, sow: bool = True):
        self.dense1 = nnx.Linear(8, 32, rngs=rngs)
        self.dense2 = nnx.Linear(32, 1, rngs=rngs)
        self.sow_features = sow

    def features(self, x, rngs=None):
        feature = nnx.relu(self.dense1(x))
        if self.sow_features:
            self.sow(nnx.Intermediate, "features", feature)
        return feature

    def loss(self, x_features, y_features):
        return jnp.sum((x_features - y_features) ** 2)

    def __call__(self, x, y):
        return self.loss(self.features(x), self.features(y))


def inputs():
    x, y = jax.random.normal(jax.random.key(1), (2, 8))
    return x, y


def test_capture_collects_each_sow_call_in_order():
    model = Foo(rngs=nnx.Rngs(0))
    x, y = inputs()
    result, intms = nnx.capture(model, nnx.Intermediate)(x, y)
    feats = intms["features"].get_value()
    assert isinstance(feats, tuple) and len(feats) == 2
    np.testing.assert_allclose(feats[0], nnx.relu(model.dense1(x)), rtol=1e-6)
    np.testing.assert_allclose(feats[1], nnx.relu(model.dense1(y)), rtol=1e-6)
    np.testing.assert_allclose(result, jnp.sum((feats[0] - feats[1]) ** 2), rtol=1e-5)


def test_capture_decorator_exposes_captures_on_the_module():
    seen = []

    @nnx.capture(nnx.Intermediate)
    def print_captures(model):
        seen.append(model.__captures__)

    _, intms = print_captures(nnx.Module())
    assert len(seen) == 1 and len(seen[0]) == 1
    assert isinstance(seen[0][0], nnx.Intermediate)
    assert len(jax.tree.leaves(intms)) == 0


def test_capture_only_collects_the_requested_type():
    class Metric1(nnx.Intermediate):
        pass

    class Metric2(nnx.Intermediate):
        pass

    @nnx.capture(Metric1)
    def get_captures(model):
        model.sow(Metric1, "gets_sown", jnp.ones(2))
        model.sow(Metric2, "gets_ignored", jnp.ones(2))

    _, intms = get_captures(nnx.Module())
    assert set(intms.keys()) == {"gets_sown"}
    assert [leaf.shape for leaf in jax.tree.leaves(intms)] == [(2,)]


def test_capture_method_outputs():
    model = Foo(rngs=nnx.Rngs(0), sow=False)
    x, y = inputs()
    result, intms = nnx.capture(model, nnx.Intermediate, method_outputs=nnx.Intermediate)(x, y)
    assert set(intms.keys()) == {"__call__", "dense1", "features", "loss"}
    assert len(intms["dense1"]["__call__"].get_value()) == 2
    feats = intms["features"].get_value()
    assert len(feats) == 2
    np.testing.assert_allclose(feats[1], nnx.relu(model.dense1(y)), rtol=1e-6)
    np.testing.assert_allclose(intms["__call__"].get_value()[0], result, rtol=1e-6)


def test_perturbation_grads_and_sown_values_merge():
    class Model(nnx.Module):
        def __call__(self, x):
            x2 = self.perturb("grad_of_x", x)
            self.sow(nnx.Intermediate, "activations", x2)
            return 3 * x2

    model = Model()

    def train_step(model, x):
        _, perturbations = nnx.capture(model, nnx.Perturbation)(x)

        def loss(model, perturbations, x):
            return nnx.capture(model, nnx.Intermediate, init=perturbations)(x)

        (grads, perturb_grads), sowed = nnx.grad(loss, argnums=(0, 1), has_aux=True)(model, perturbations, x)
        return nnx.merge_state(perturb_grads, sowed)

    out = train_step(model, 1.0)
    assert float(out["grad_of_x"][...]) == 3.0
    assert float(out["activations"].get_value()[0]) == 1.0


def test_captures_hold_only_the_requested_types_while_running():
    log = []

    class Model(nnx.Module):
        def __call__(self, x):
            log.append(tuple(type(c) for c in self.__captures__))
            x2 = self.perturb("grad_of_x", x)
            self.sow(nnx.Intermediate, "activations", x2)  # no-op unless captured
            return 3 * x2

    model = Model()
    _, perturbations = nnx.capture(model, nnx.Perturbation)(1.0)
    assert set(perturbations.keys()) == {"grad_of_x"}
    assert float(perturbations["grad_of_x"][...]) == 0.0
    _, interms = nnx.capture(model, nnx.Intermediate, init=perturbations)(1.0)
    assert log[0] == (nnx.Perturbation,)
    assert set(log[1]) == {nnx.Intermediate, nnx.Perturbation}
    assert float(interms["activations"].get_value()[0]) == 1.0


def test_per_example_perturbation_grads_under_jit_and_vmap():
    class Foo(nnx.Module):
        def __init__(self, dim):
            self.w = nnx.Param(jax.random.normal(jax.random.key(0), dim))

        def __call__(self, x):
            x = self.perturb("grad_of_x", x)
            y = jnp.dot(x, self.w)
            self.sow(nnx.Intermediate, "y", y)
            return y

    @nnx.capture(nnx.Perturbation)
    def init_perturbations(model, x):
        graphdef, intms, params = nnx.split(model, nnx.Intermediate, nnx.Param)

        def forward(intms, params, x):
            return nnx.merge(graphdef, intms, params)(x)

        return nnx.vmap(forward, in_axes=(0, None, 0))(intms, params, x)

    @nnx.jit
    def train_step(model, x):
        _, perturbations = init_perturbations(model, x)

        def loss_grad(model, perturbations, x):
            def loss(model, perturbations, x):
                return nnx.capture(model, nnx.Intermediate, init=perturbations)(x)

            (grads, perturb_grads), sowed = nnx.grad(loss, argnums=(0, 1), has_aux=True)(
                model, perturbations, x
            )
            return grads, nnx.merge_state(perturb_grads, sowed)

        return nnx.vmap(loss_grad, in_axes=(None, 0, 0))(model, perturbations, x)

    model = Foo(4)
    x = jnp.arange(12.0).reshape(3, 4)
    grads, intermediates = train_step(model, x)
    assert intermediates["grad_of_x"][...].shape == (3, 4)
    np.testing.assert_allclose(
        intermediates["grad_of_x"][...], jnp.broadcast_to(model.w[...], (3, 4)), rtol=1e-6
    )
    np.testing.assert_allclose(intermediates["y"].get_value()[0], x @ model.w[...], rtol=1e-5)
    np.testing.assert_allclose(grads["w"][...], x, rtol=1e-6)
