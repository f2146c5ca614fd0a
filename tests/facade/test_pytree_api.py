import dataclasses
import functools
import typing as tp

import jax
import jax.numpy as jnp
import pytest

import nnxfn as nnx


def _eq(a, b):
    assert jnp.allclose(jnp.asarray(a), jnp.asarray(b)), (a, b)


class Foo(nnx.Pytree):
    def __init__(self, a, b, c):
        self.a = nnx.data(a)
        self.b = nnx.static(b)
        self.c = c


def test_data_makes_a_scalar_a_leaf_and_static_hides_an_array():
    foo = Foo(1, 2, jnp.array(3.0))
    assert jax.tree.leaves(foo)[0] == 1 and len(jax.tree.leaves(foo)) == 2
    state = nnx.state(foo)
    assert state["a"] == 1 and "b" not in state
    doubled = jax.tree.map(lambda x: x * 2, foo)
    assert doubled.a == 2 and doubled.b == 2
    _eq(doubled.c, 6.0)
    graphdef, state = nnx.split(foo)
    back = nnx.merge(graphdef, state)
    assert back.a == 1 and type(back.a) is int and back.b == 2
    # explicitly data stays data when rebound to a plain value (Flax)
    foo.a = "hello"
    assert jax.tree.leaves(foo)[0] == "hello"
    foo.a = nnx.static(3)
    assert len(jax.tree.leaves(foo)) == 1
    foo.b = nnx.data(4)
    assert jax.tree.leaves(foo)[0] == 4


def test_static_with_data_raises_and_changes_nothing():
    foo = Foo(1, 2, jnp.array(3.0))
    with pytest.raises(ValueError, match=r"Found data in value of type .*'b' of Pytree type 'Foo'"):
        foo.b = nnx.static(jnp.array(4))
    assert foo.b == 2
    foo.b = 5  # a plain rebind of a static attribute stays static
    assert "b" not in nnx.state(foo)
    with pytest.raises(ValueError, match=r"Found data on value of type .*'b'.*nnx\.data"):
        foo.b = ["hi", jnp.array(6)]
    assert foo.b == 5


def test_nnx_dataclass_fields_and_annotations():
    @nnx.dataclass
    class Bar(nnx.Pytree):
        a: int = nnx.static()
        b: jax.Array = nnx.data()
        c: int = nnx.data(default=6)

    m = Bar(a=1, b=jnp.array(2.0))
    assert [float(x) for x in jax.tree.leaves(m)] == [2.0, 6.0]
    m2 = jax.tree.map(lambda x: x + 1, m)
    assert m2.a == 1 and m2.c == 7
    assert "Bar(" in repr(m)  # nnx's repr, not the dataclass one

    @dataclasses.dataclass
    class Baz(nnx.Pytree):
        a: nnx.Data[int]
        b: nnx.Static[int]

    assert jax.tree.leaves(Baz(a=1, b=2)) == [1]

    @nnx.dataclass
    class Bad(nnx.Pytree):
        a: jax.Array = nnx.static()

    with pytest.raises(ValueError, match="Found unexpected data on value of type"):
        Bad(a=jnp.array(3))


def test_data_and_static_fields_reject_mixed_use():
    with pytest.raises(TypeError, match="either one positional value or field keywords"):
        nnx.data(1, default=2)
    with pytest.raises(ValueError, match="Cannot use 'static' key"):
        nnx.static(metadata={"static": True})


def test_is_data_has_data_and_register_data_type():
    assert nnx.is_data(jnp.array(0)) and nnx.is_data(nnx.Param(1)) and nnx.is_data(nnx.Rngs(0))
    assert not nnx.is_data("hello") and not nnx.is_data(42)
    assert not nnx.is_data([jnp.array(1)])
    found = nnx.has_data([1, jnp.array(2.0), {"v": nnx.Param(3)}])
    assert len(found) == 2 and isinstance(found[1], nnx.Param)

    @nnx.register_data_type
    @dataclasses.dataclass(frozen=True)
    class MyType:
        value: int

    class Holder(nnx.Pytree):
        def __init__(self):
            self.a = MyType(42)
            self.b = "hello"

    h = Holder()
    assert nnx.is_data(h.a)
    assert jax.tree.leaves(h) == [MyType(42)]
    nnx.check_pytree(h)
    with pytest.raises(TypeError, match="Expected a Pytree"):
        nnx.check_pytree(3)


@functools.partial(jax.tree_util.register_dataclass, data_fields=["q", "scale"], meta_fields=["how"])
@dataclasses.dataclass(frozen=True)
class Quantized:
    """A registered data type that is a pytree node holding Params."""

    q: tp.Any
    scale: tp.Any
    how: str = "int8"


nnx.register_data_type(Quantized)


class QLinear(nnx.Module):
    def __init__(self):
        self.kernel = Quantized(nnx.Param(jnp.arange(6.0).reshape(2, 3)), nnx.Param(jnp.ones((1, 3))))
        self.bias = nnx.Param(jnp.zeros(3))
        self.lora = nnx.LoRAParam(jnp.full(3, 2.0))


def test_a_data_type_holding_params_is_walked_into():
    m = QLinear()
    lora, params = nnx.state(m, nnx.LoRAParam, nnx.Param)
    assert [p for p, _ in params.flat_state()] == [("bias",), ("kernel", "q"), ("kernel", "scale")]
    _eq(params["kernel"]["q"][...], jnp.arange(6.0).reshape(2, 3))
    assert [p for p, _ in lora.flat_state()] == [("lora",)]
    pure = nnx.to_pure_dict(nnx.state(m))
    _eq(pure["kernel"]["scale"], jnp.ones((1, 3)))

    graphdef, state = nnx.split(m)
    back = nnx.merge(graphdef, jax.tree.map(lambda x: x + 1, state))
    assert isinstance(back.kernel, Quantized) and back.kernel.how == "int8"
    _eq(back.kernel.q[...], jnp.arange(6.0).reshape(2, 3) + 1)

    nnx.update(m, {"kernel": {"q": jnp.full((2, 3), 7.0), "scale": jnp.full((1, 3), 3.0)}})
    _eq(m.kernel.q[...], jnp.full((2, 3), 7.0))
    _eq(m.kernel.scale[...], jnp.full((1, 3), 3.0))
    grads = nnx.grad(lambda m: (m.kernel.q[...] * m.kernel.scale[...]).sum())(m)
    _eq(grads["kernel"]["q"][...], jnp.full((2, 3), 3.0))


def test_a_data_type_that_is_one_jax_leaf_stays_whole():
    @nnx.register_data_type
    @dataclasses.dataclass(frozen=True)
    class Tag:
        value: int

    class Holder(nnx.Module):
        def __init__(self):
            self.tag = Tag(3)

    graphdef, state = nnx.split(Holder())
    assert state["tag"] == Tag(3)
    assert nnx.merge(graphdef, state).tag == Tag(3)


def test_pytree_false_is_one_jax_leaf_but_still_a_graph_node():
    class Opaque(nnx.Pytree, pytree=False):
        def __init__(self):
            self.w = nnx.Param(jnp.ones(2))

    o = Opaque()
    assert jax.tree.leaves(o) == [o]
    assert list(nnx.state(o)) == ["w"]

    class Obj(nnx.Object):  # Flax's Object is not a pytree
        pass

    assert jax.tree.leaves(Obj())[0].__class__ is Obj
    with pytest.raises(ValueError, match="not a pytree"):

        class Wrong(nnx.Object, pytree=True):  # noqa: F841
            pass


def test_flax_introspection_attributes():
    m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    m.tag = nnx.static("t")
    nodes = m._pytree__nodes
    assert nodes["kernel"] is True and nodes["tag"] is False
    assert hasattr(m, "_pytree__state")


def test_namespaces_reexport_the_same_objects():
    assert nnx.pytreelib.Pytree is nnx.Pytree and nnx.object.data is nnx.data
    assert nnx.variablelib.Variable is nnx.Variable
    assert nnx.module.Module is nnx.Module and nnx.module.capture is nnx.capture
    assert nnx.tracers.TraceState().is_valid()
    assert callable(nnx.visualization.display) and callable(nnx.reprlib.variable_repr)
