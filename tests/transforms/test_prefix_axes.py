"""`nnx.prefix(...)` results as in_axes/out_axes of nnx.vmap (transforms/axes.py NodePrefix)."""

import jax.numpy as jnp
import pytest

import nnxfn as nnx


class Foo(nnx.Module):
    def __init__(self):
        self.w = nnx.Param(jnp.arange(24.0).reshape(4, 2, 3))
        self.b = nnx.BatchStat(jnp.ones(3))


@pytest.mark.parametrize("graph", [True, False])
def test_vmap_with_a_prefix_of_either_form(graph):
    model, x = Foo(), jnp.ones(2)
    axes = nnx.prefix(model, {nnx.Param: 0, nnx.BatchStat: None}, graph=graph)
    y = nnx.vmap(lambda m, x: x @ m.w + m.b, in_axes=(axes, None), out_axes=0)(model, x)
    expected = jnp.einsum("i,kij->kj", x, model.w[...]) + 1.0
    assert jnp.allclose(y, expected)


@pytest.mark.parametrize("graph", [True, False])
def test_vmap_with_prefixes_of_an_aliased_pair(graph):
    model, x = Foo(), jnp.ones(2)
    a1, a2 = nnx.prefix((model, model), {nnx.Param: 0, ...: None}, graph=graph)

    def f(m1, m2, x):
        assert m1 is m2
        return x @ m1.w + x @ m2.w

    y = nnx.vmap(f, in_axes=(a1, a2, None), out_axes=0)(model, model, x)
    assert jnp.allclose(y, 2 * jnp.einsum("i,kij->kj", x, model.w[...]))


def test_prefix_of_another_object_names_the_missing_path():
    model, other = Foo(), Foo()
    other.extra = nnx.Param(jnp.ones(4))
    axes = nnx.prefix(model, {...: None}, graph=False)
    with pytest.raises(ValueError, match="no value at node.extra"):
        nnx.vmap(lambda m: m.extra[...], in_axes=(axes,), out_axes=0, axis_size=4)(other)


def test_vmap_with_a_variable_prefix():
    v = nnx.Param(jnp.arange(6.0).reshape(3, 2))
    for graph in (True, False):
        axes = nnx.prefix(v, {nnx.Param: 0}, graph=graph)
        y = nnx.vmap(lambda v: v[...].sum(), in_axes=(axes,), out_axes=0)(v)
        assert jnp.allclose(y, jnp.array([1.0, 5.0, 9.0]))
