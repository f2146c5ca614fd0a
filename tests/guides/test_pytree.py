"""The behaviour shown in Flax's `guides/pytree` guide, run with `import nnxfn as nnx`."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxfn as nnx


def leaf_paths(tree) -> dict[str, object]:
    path_leaves, _ = jax.tree.flatten_with_path(tree)
    return {jax.tree_util.keystr(path): value for path, value in path_leaves}


def test_module_is_a_pytree_for_jax_jit():
    class Linear(nnx.Module):
        def __init__(self, din, dout, rngs: nnx.Rngs):
            self.din, self.dout = din, dout
            self.kernel = nnx.Param(rngs.normal((din, dout)))

    rngs = nnx.Rngs(0)
    weights = Linear(2, 3, rngs=rngs)

    @jax.jit
    def forward(weights, x):
        return x @ weights.kernel

    x = rngs.uniform((5, 2))
    y = forward(weights, x=x)
    np.testing.assert_allclose(y, x @ weights.kernel[...], rtol=1e-6)


def test_static_and_data_annotations_choose_the_leaves():
    class Linear(nnx.Pytree):
        def __init__(self, din: int, dout: int):
            self.din = nnx.static(din)
            self.dout = nnx.static(dout)
            self.w = nnx.data(jnp.ones((din, dout)))
            self.b = nnx.data(jnp.zeros((dout,)))

    class MLP(nnx.Pytree):
        def __init__(self, num_layers, dim):
            self.num_layers = nnx.static(num_layers)
            self.layers = nnx.data([Linear(dim, dim) for _ in range(num_layers)])

    leaves = leaf_paths(MLP(num_layers=2, dim=1))
    assert set(leaves) == {".layers[0].b", ".layers[0].w", ".layers[1].b", ".layers[1].w"}


def test_arrays_are_data_by_default_and_nnx_list_holds_data():
    class Linear(nnx.Pytree):
        def __init__(self, din: int, dout: int):
            self.din = din
            self.dout = dout
            self.w = jnp.ones((din, dout))
            self.b = jnp.zeros((dout,))

    class MLP(nnx.Pytree):
        def __init__(self, num_layers, dim):
            self.num_layers = num_layers
            self.layers = nnx.List([Linear(dim, dim) for _ in range(num_layers)])

    leaves = leaf_paths(MLP(num_layers=2, dim=1))
    assert set(leaves) == {".layers[0].b", ".layers[0].w", ".layers[1].b", ".layers[1].w"}


def test_is_data():
    assert nnx.is_data(jnp.array(0))
    assert nnx.is_data(nnx.Param(1))
    assert nnx.is_data(nnx.Rngs(2))
    assert not nnx.is_data("hello")
    assert not nnx.is_data(42)
    assert not nnx.is_data([1, 2.0, 3j, jnp.array(1)])


def test_data_forces_non_array_values_to_leaves():
    class Bar(nnx.Pytree):
        def __init__(self, x, use_bias: bool):
            self.x = nnx.data(x)
            self.y = nnx.data(42)
            self.ls = nnx.List([jnp.array(i) for i in range(3)])
            self.bias = nnx.data(None)
            if use_bias:
                self.bias = nnx.Param(jnp.array(0.0))

    leaves = leaf_paths(Bar(1.0, True))
    assert set(leaves) == {".bias.value", ".ls[0]", ".ls[1]", ".ls[2]", ".x", ".y"}
    assert leaves[".x"] == 1.0 and leaves[".y"] == 42
    assert set(leaf_paths(Bar(1.0, False))) == {".ls[0]", ".ls[1]", ".ls[2]", ".x", ".y"}


def test_nnx_dataclass_fields():
    @nnx.dataclass
    class Foo(nnx.Pytree):
        i: int = nnx.data()
        x: jax.Array
        a: int
        s: str = nnx.static(default="hi", kw_only=True)

    @nnx.dataclass
    class Bar(nnx.Pytree):
        ls: list[Foo] = nnx.data()
        shapes: list[int]

    pytree = Bar(ls=[Foo(i, jnp.array(42 * i), hash(i)) for i in range(2)], shapes=[8, 16, 32])
    leaves = leaf_paths(pytree)
    assert set(leaves) == {".ls[0].i", ".ls[0].x", ".ls[1].i", ".ls[1].x"}
    assert int(leaves[".ls[1].x"]) == 42
    assert pytree.ls[0].s == "hi"


def test_dataclass_field_metadata_static():
    @dataclasses.dataclass
    class Bar(nnx.Pytree):
        a: int = dataclasses.field(metadata={"static": False})
        b: str = dataclasses.field(metadata={"static": True})

    assert leaf_paths(Bar(a=10, b="hello")) == {".a": 10}


def test_reassignment_keeps_or_overrides_status():
    class Foo(nnx.Pytree):
        def __init__(self):
            self.a = jnp.array(1.0)
            self.b = "Hello, world!"
            self.c = nnx.data(3.14)

    pytree = Foo()
    assert set(leaf_paths(pytree)) == {".a", ".c"}
    pytree.a = "x"
    pytree.b = nnx.data(42)
    pytree.c = nnx.static(0.5)
    leaves = leaf_paths(pytree)
    assert leaves == {".a": "x", ".b": 42}


def test_static_attribute_rejects_arrays():
    class Foo(nnx.Pytree):
        def __init__(self, name):
            self.name = nnx.static(name)

    with pytest.raises(ValueError):
        Foo(name=jnp.array(123))
    foo = Foo(name="mattjj")
    with pytest.raises(ValueError):
        foo.name = jnp.array(123)
    assert foo.name == "mattjj"


def test_arrays_appended_to_a_plain_list_are_data():
    # Deliberate difference: flax raises "Found unexpected data ... in static
    # attribute 'ls'"; in nnxfn plain lists of arrays/modules are data, no wrapper needed.
    class Foo(nnx.Pytree):
        def __init__(self):
            self.ls = []
            for i in range(5):
                self.ls.append(jnp.array(i))

    foo = Foo()
    assert [int(x) for x in jax.tree.leaves(foo)] == [0, 1, 2, 3, 4]
    assert [int(x) for x in jax.tree.leaves(nnx.state(foo))] == [0, 1, 2, 3, 4]


def test_annotations_inside_sub_pytrees_are_an_error():
    class Foo(nnx.Pytree):
        def __init__(self):
            self.a = [nnx.data(1), nnx.static(2)]

    with pytest.raises(ValueError):
        Foo()


def test_mutating_a_captured_pytree_under_jax_vmap_raises():
    # The guide increments a Python int (flax raises even then); here the new
    # value is a tracer, which must never be left on the object.
    class Foo(nnx.Pytree):
        def __init__(self):
            self.count = nnx.data(jnp.array(0))

    foo = Foo()

    @jax.vmap
    def increment(n):
        foo.count += n

    with pytest.raises(Exception):
        increment(jnp.arange(5))
    assert not isinstance(foo.count, jax.core.Tracer)
    assert int(foo.count) == 0


def test_shared_references_split_merge_and_nnx_jit():
    class Shared(nnx.Pytree):
        def __init__(self):
            self.x = jnp.array(1.0)

    class Parent(nnx.Pytree):
        def __init__(self):
            self.left = Shared()
            self.right = self.left

    m = Parent()
    assert nnx.find_duplicates(m) == [[("left",), ("right",)]]

    graphdef, state = nnx.split(m)

    @jax.jit
    def f(graphdef, state):
        m = nnx.merge(graphdef, state)
        assert m.left is m.right
        m.left.x = m.left.x + 1
        return nnx.state(m)

    state = f(graphdef, state)
    nnx.update(m, state)
    assert m.left is m.right and float(m.right.x) == 2.0
    assert list(state.keys()) == ["left"]  # deduplicated

    @nnx.jit
    def g(m):
        assert m.left is m.right
        return m

    m2 = g(m)
    assert m2.left is m2.right


@pytest.mark.parametrize("kind", ["pytree_false", "object"])
def test_non_pytree_objects_work_with_nnx_apis(kind):
    base = (nnx.Object,) if kind == "object" else (nnx.Pytree,)
    kwargs = {} if kind == "object" else {"pytree": False}

    class Foo(*base, **kwargs):
        def __init__(self):
            self.a = [jnp.array(1), jnp.array(2)]
            self.b = "hello"
            self.b = jnp.array(3)

    foo = Foo()

    @nnx.jit
    def double(foo: Foo):
        foo.a = [x * 2 for x in foo.a]
        foo.b *= 2

    double(foo)
    assert [int(x) for x in foo.a] == [2, 4] and int(foo.b) == 6
    state = nnx.state(foo)
    assert int(state["a"][1]) == 4 and int(state["b"]) == 6
    assert jax.tree_util.all_leaves([foo])  # not a pytree: a leaf to jax


def test_capture_sown_intermediates():
    class Block(nnx.Module):
        def __init__(self, din: int, dout: int, rngs: nnx.Rngs):
            self.linear = nnx.Linear(din, dout, rngs=rngs)
            self.bn = nnx.BatchNorm(dout, use_running_average=False, rngs=rngs)

        def __call__(self, x):
            y = nnx.relu(self.bn(self.linear(x)))
            self.sow(nnx.Intermediate, "y_mean", jnp.mean(y))
            return y

    class MLP(nnx.Module):
        def __init__(self, num_layers, dim, rngs: nnx.Rngs):
            self.blocks = nnx.List([Block(dim, dim, rngs) for _ in range(num_layers)])

        def __call__(self, x):
            for block in self.blocks:
                x = block(x)
            return x

    model = MLP(num_layers=3, dim=20, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (10, 20))
    y, intermediates = nnx.capture(model, nnx.Intermediate)(x)
    assert set(intermediates["blocks"].keys()) == {0, 1, 2}
    last = intermediates["blocks"][2]["y_mean"]
    np.testing.assert_allclose(jax.tree.leaves(last)[0], jnp.mean(y), rtol=1e-6)
    assert not hasattr(model.blocks[0], "y_mean")  # captured, not left on the model


def test_perturbation_gradients_via_capture():
    class Model(nnx.Module):
        def __init__(self, rngs):
            self.linear1 = nnx.Linear(2, 3, rngs=rngs)
            self.linear2 = nnx.Linear(3, 4, rngs=rngs)

        def __call__(self, x):
            x = nnx.gelu(self.linear1(x))
            x = self.perturb("xgrad", x)
            return self.linear2(x)

    rngs = nnx.Rngs(0)
    model = Model(rngs)
    x, y = rngs.uniform((1, 2)), rngs.uniform((1, 4))
    _, perturbations = nnx.capture(model, nnx.Perturbation)(x)
    np.testing.assert_array_equal(perturbations["xgrad"][...], jnp.zeros((1, 3)))

    @nnx.value_and_grad(argnums=(0, 1))
    def loss_grad(model, perturbations, x, y):
        def loss_fn(model):
            return jnp.mean((model(x) - y) ** 2)

        return nnx.capture(loss_fn, init=perturbations)(model)

    loss, (weight_grads, interm_grads) = loss_grad(model, perturbations, x, y)
    h = nnx.gelu(model.linear1(x))
    out = model.linear2(h)
    expected = (2.0 / 4.0) * (out - y) @ model.linear2.kernel[...].T
    np.testing.assert_allclose(interm_grads["xgrad"][...], expected, rtol=1e-5, atol=1e-7)
    assert weight_grads["linear1"]["kernel"][...].shape == (2, 3)
