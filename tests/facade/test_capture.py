import jax.numpy as jnp
import pytest

import nnxfn as nnx


class Foo(nnx.Module):
    def __init__(self):
        self.w = nnx.Param(jnp.array([1.0, 2.0]))

    def __call__(self, x):
        self.sow(nnx.Intermediate, "features", x * self.w)
        y = self.perturb("grad_of_y", x * 3)
        return y.sum()


def test_capture_returns_sown_values_and_removes_them():
    m = Foo()
    out, inter = nnx.capture(m, nnx.Intermediate)(jnp.ones(2))
    assert float(out) == 6.0
    assert jnp.allclose(inter["features"].value[0], jnp.array([1.0, 2.0]))
    assert "features" not in vars(m)


def test_capture_several_types_and_function_form():
    m = Foo()
    out, inter, pert = nnx.capture(lambda mod, x: mod(x), nnx.Intermediate, nnx.Perturbation)(m, jnp.ones(2))
    assert set(inter) == {"features"} and set(pert) == {"grad_of_y"}
    assert jnp.allclose(pert["grad_of_y"].value, 0.0)
    assert isinstance(pert["grad_of_y"], nnx.Perturbation)


def test_capture_partial_form_and_init_feeds_perturbations():
    m = Foo()
    init = nnx.State({"grad_of_y": nnx.Perturbation(jnp.array([1.0, 1.0]))})
    out, _ = nnx.capture(nnx.Perturbation, init=init)(m)(jnp.ones(2))
    assert float(out) == 8.0  # (3 + 1) * 2


def test_perturbation_gradient_equals_output_gradient():
    m = Foo()
    m(jnp.ones(2))  # creates the zero perturbation
    grads = nnx.grad(lambda mod, x: mod(x), argnums=nnx.DiffState(0, nnx.Perturbation))(m, jnp.ones(2))
    assert jnp.allclose(grads["grad_of_y"].value, 1.0)


def test_view_shares_variables_and_only_filter():
    class Block(nnx.Module):
        def __init__(self):
            self.bn = nnx.BatchNorm(2, rngs=nnx.Rngs(0))
            self.drop = nnx.Dropout(0.5, rngs=nnx.Rngs(0))

    b = Block()
    v = nnx.view(b, only=nnx.Dropout, deterministic=True)
    assert v.drop.deterministic and not b.drop.deterministic
    assert v.bn.mean is b.bn.mean
    with pytest.raises(ValueError, match=r"Unused keys found in nnx.view: \['not_an_attribute'\]"):
        nnx.view(b, not_an_attribute=1)  # Flax's error type and message
