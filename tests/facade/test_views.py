import jax.numpy as jnp
import pytest

import nnxfn as nnx


class Block(nnx.Module):
    def __init__(self, rngs):
        self.linear = nnx.Linear(2, 4, rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.dropout = nnx.Dropout(0.2, rngs=rngs)

    def __call__(self, x):
        return self.dropout(self.bn(self.linear(x)))


def test_view_uses_set_view_and_reports_unused_keys():
    b = Block(nnx.Rngs(0))
    v = nnx.view(b, deterministic=True, use_running_average=True)
    assert v.dropout.deterministic and v.bn.use_running_average
    assert not b.dropout.deterministic and not b.bn.use_running_average
    assert v.linear.kernel is b.linear.kernel
    with pytest.raises(ValueError, match=r"Unused keys found in nnx.view: \['unknown'\]"):
        nnx.view(b, deterministic=True, unknown=1)


def test_with_attributes_copies_and_filters():
    b = Block(nnx.Rngs(0))
    w = nnx.with_attributes(b, only=nnx.Dropout, deterministic=True)
    assert w.dropout.deterministic and not b.dropout.deterministic
    with pytest.raises(ValueError, match=r"following attributes: \['unknown'\]"):
        nnx.with_attributes(b, unknown=True)
    same = nnx.with_attributes(b, unknown=True, raise_if_not_found=False)
    assert same.bn.scale is b.bn.scale


def test_view_info_lists_set_view_arguments():
    info = nnx.view_info(Block(nnx.Rngs(0)))
    assert info.splitlines()[0] == "BatchNorm:"
    assert "  deterministic: bool | None = None\n    if True, disables dropout masking." in info
    assert nnx.view_info(Block(nnx.Rngs(0)), only=nnx.Linear) == ""


def test_repr_first_line_has_variable_counts():
    b = Block(nnx.Rngs(0))
    first = repr(b).splitlines()[0].replace(",", "")
    assert "Param: 20 " in first  # 2*4 kernel + 4 bias + 4 scale + 4 bias
    assert "BatchStat: 8 " in first and "Total: 30 " in first


class Model(nnx.Module):
    def __init__(self):
        self.w = nnx.Param(jnp.array([1.0, 2.0]))

    def helper(self, x):
        return x * 2.0

    def __call__(self, x):
        x = self.perturb("grad_of_x", x)
        y = self.helper(x * self.w)
        self.sow(nnx.Intermediate, "y", y)
        return y.sum()


def test_capture_uses_captures_buffers_and_leaves_no_attribute():
    m = Model()
    out, inter = nnx.capture(m, nnx.Intermediate)(jnp.ones(2))
    _eq = lambda a, b: jnp.allclose(jnp.asarray(a), jnp.asarray(b))  # noqa: E731
    assert _eq(out, 6.0) and _eq(inter["y"][...][0], [2.0, 4.0])
    assert "y" not in vars(m) and "__captures__" not in vars(m) and "grad_of_x" not in vars(m)
    assert m.sow(nnx.Intermediate, "z", 1) is True and vars(m)["z"][...] == (1,)  # outside capture


def test_capture_method_outputs_and_perturbation_gradients():
    m = Model()
    (out, intms) = nnx.capture(m, nnx.Intermediate, method_outputs=nnx.Intermediate)(jnp.ones(2))
    assert set(intms) == {"__call__", "helper", "y"}
    assert jnp.allclose(intms["__call__"][...][0], out)
    assert Model.helper.__name__ == "helper" and not hasattr(Model.helper, "__wrapped__")

    _, perturbations = nnx.capture(m, nnx.Perturbation)(jnp.ones(2))
    assert jnp.allclose(perturbations["grad_of_x"][...], 0.0)

    def loss(model, perturbations, x):
        return nnx.capture(model, nnx.Intermediate, init=perturbations)(x)

    (grads, pgrads), sowed = nnx.grad(loss, argnums=(0, 1), has_aux=True)(m, perturbations, jnp.ones(2))
    # d/dx sum(2 * x * w) = 2 * w
    assert jnp.allclose(pgrads["grad_of_x"][...], jnp.array([2.0, 4.0]))
    assert jnp.allclose(grads["w"][...], jnp.array([2.0, 2.0]))
    assert jnp.allclose(sowed["y"][...][0], jnp.array([2.0, 4.0]))


def test_sow_errors_name_the_attribute():
    m = Model()
    m.y = 10
    with pytest.raises(ValueError, match="'y' to be a Variable, got int"):
        m.sow(nnx.Intermediate, "y", 1)
    m.y = nnx.Param(1)
    with pytest.raises(ValueError, match="'y' to be of type 'Intermediate'"):
        m.sow(nnx.Intermediate, "y", 1)


def test_iter_children_lists_direct_submodules():
    names = [k for k, _ in nnx.iter_children(Block(nnx.Rngs(0)))]
    assert names == ["bn", "dropout", "linear"]


def test_iter_module_children_and_as_abstract():
    import jax

    assert [k for k, _ in nnx.iter_children(nnx.Dropout(0.1, rngs=nnx.Rngs(0)))] == ["rngs"]
    assert list(nnx.iter_module_children(nnx.Dropout(0.1, rngs=nnx.Rngs(0)))) == []
    mesh = jax.make_mesh((1,), ("a",), axis_types=(jax.sharding.AxisType.Auto,))
    abstract = nnx.eval_shape(  # no mesh here: no shardings yet
        lambda: nnx.Linear(4, 8, rngs=nnx.Rngs(0), kernel_metadata={"out_sharding": ("a", None)})
    )
    assert abstract.kernel.get_value().sharding is None
    with jax.set_mesh(mesh):
        annotated = nnx.as_abstract(abstract)
    assert annotated.kernel.get_value().sharding.spec == jax.P("a", None)
    assert annotated.kernel.get_value().shape == (4, 8)
    assert annotated.bias.get_value().shape == (8,)  # no annotation: left without a sharding
    assert getattr(annotated.bias.get_value(), "sharding", None) is None
