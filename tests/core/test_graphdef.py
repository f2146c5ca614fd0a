"""GraphDef: hashable, compared by structure, encodes sharing and cycles."""

import jax
import jax.numpy as jnp
import pytest

import nnxfn as nnx


class Linear(nnx.Module):
    def __init__(self, din, dout, seed=0, **extra):
        self.kernel = nnx.Param(jax.random.normal(jax.random.key(seed), (din, dout)))
        self.bias = nnx.Param(jnp.zeros(dout))
        self.din = din
        for k, v in extra.items():
            setattr(self, k, v)


class Other(Linear):
    pass


class Pair(nnx.Module):
    def __init__(self, share=False, seed=0):
        self.a = Linear(2, 2, seed=seed)
        self.b = self.a if share else Linear(2, 2, seed=seed + 1)


def gd(x):
    return nnx.graphdef(x)


def test_hashable_and_usable_as_dict_key_and_jit_static():
    g = gd(Linear(2, 3))
    assert isinstance(hash(g), int)
    table = {g: "found"}
    assert table[gd(Linear(2, 3, seed=5))] == "found"

    calls = []

    def f(graphdef, state):
        calls.append(1)
        return nnx.merge(graphdef, state).kernel[...].sum()

    jf = jax.jit(f, static_argnums=0)
    g1, s1 = nnx.split(Linear(2, 3, seed=1))
    g2, s2 = nnx.split(Linear(2, 3, seed=2))
    jf(g1, s1)
    jf(g2, s2)
    assert len(calls) == 1  # equal GraphDefs share one trace


def test_equal_for_structurally_equal_graphs_built_separately():
    a, b = Linear(2, 3, seed=0), Linear(2, 3, seed=7)
    assert a is not b
    assert gd(a) == gd(b) and hash(gd(a)) == hash(gd(b))
    assert gd(Pair(share=True)) == gd(Pair(share=True, seed=4))
    assert gd(Pair()) == gd(Pair(seed=3))


def test_equal_with_metadata_and_containers():
    def make():
        m = nnx.Module()
        m.layers = [Linear(1, 1), {"x": jnp.ones(2), "y": (jnp.zeros(1), "s")}]
        m.p = nnx.Param(jnp.ones(2), sharding=("data",), tag="p")
        return m

    assert gd(make()) == gd(make())


def test_unequal_node_type():
    assert gd(Linear(2, 3)) != gd(Other(2, 3))


def test_unequal_attribute_names():
    assert gd(Linear(2, 3, extra=1)) != gd(Linear(2, 3, other=1))
    assert gd(Linear(2, 3, extra=1)) != gd(Linear(2, 3))


def test_unequal_static_values():
    assert gd(Linear(2, 3)) != gd(Linear(3, 3))
    assert gd(Linear(2, 3, mode="a")) != gd(Linear(2, 3, mode="b"))


def test_unequal_static_values_of_different_types():
    # 1 == 1.0 == True in Python, but they trace differently (dtypes, shapes)
    assert gd(Linear(2, 3, n=1)) != gd(Linear(2, 3, n=1.0))
    assert gd(Linear(2, 3, n=1)) != gd(Linear(2, 3, n=True))
    assert gd(Linear(2, 3, n=(1, 2))) != gd(Linear(2, 3, n=(1.0, 2)))
    a, b = Linear(2, 3), Linear(2, 3)
    a.flag = nnx.static(1)
    b.flag = nnx.static(1.0)
    assert gd(a) != gd(b)


def test_unequal_variable_type():
    a, b = Linear(2, 3), Linear(2, 3)
    b.bias = nnx.BatchStat(jnp.zeros(3))
    assert gd(a) != gd(b)


def test_unequal_variable_metadata():
    a, b, c = Linear(2, 3), Linear(2, 3), Linear(2, 3)
    a.kernel.set_metadata("sharding", ("data", None))
    b.kernel.set_metadata("sharding", (None, "model"))
    assert gd(a) != gd(b)
    assert gd(a) != gd(c)
    c.kernel.set_metadata("sharding", ("data", None))
    assert gd(a) == gd(c)
    d = Linear(2, 3)
    d.kernel.set_metadata("sharding", ("data", 0))
    e = Linear(2, 3)
    e.kernel.set_metadata("sharding", ("data", False))
    assert gd(d) != gd(e)


def test_unequal_sharing_pattern():
    assert gd(Pair(share=True)) != gd(Pair(share=False))
    m1, m2 = nnx.Module(), nnx.Module()
    m1.x = m1.y = nnx.Param(jnp.ones(1))
    m2.x, m2.y = nnx.Param(jnp.ones(1)), nnx.Param(jnp.ones(1))
    assert gd(m1) != gd(m2)


def test_unequal_container_type():
    m1, m2 = nnx.Module(), nnx.Module()
    m1.items = [jnp.ones(1)]
    m2.items = (jnp.ones(1),)
    assert gd(m1) != gd(m2)


def test_array_vs_variable_differs():
    m1, m2 = nnx.Module(), nnx.Module()
    m1.w = jnp.ones(2)
    m2.w = nnx.Param(jnp.ones(2))
    assert gd(m1) != gd(m2)


def test_shape_is_not_part_of_graphdef():
    # shapes live in the State; the GraphDef is purely structural
    m1, m2 = nnx.Module(), nnx.Module()
    m1.w = nnx.Param(jnp.ones(2))
    m2.w = nnx.Param(jnp.ones(5))
    assert gd(m1) == gd(m2)


def test_shared_refs_and_cycles_encoded():
    m = Pair(share=True)
    m.me = m
    m.a.up = m
    g, state = nnx.split(m)
    text = repr(g)
    assert "<shared #" in text
    new = nnx.merge(g, state)
    assert new.a is new.b
    assert new.me is new
    assert new.a.up is new
    # a separately built graph with the same cycles is equal
    m2 = Pair(share=True, seed=9)
    m2.me = m2
    m2.a.up = m2
    assert nnx.graphdef(m2) == g


def test_num_leaves_and_type():
    g, state = nnx.split(Pair(share=True))
    assert g.num_leaves == 2 == len(state.flat_state())
    assert g.type is Pair
    g2, _ = nnx.split(Pair())
    assert g2.num_leaves == 4


def test_graphdef_not_equal_to_other_objects():
    g = gd(Linear(1, 1))
    assert g != "GraphDef"
    assert g != None  # noqa: E711
    assert g == g


def test_repr_lists_structure():
    text = repr(gd(Linear(2, 3)))
    assert text.startswith("GraphDef(Linear(")
    assert "'kernel': Param" in text and "'din': 2" in text


def test_pytree_leaf_graphdef_is_jit_cache_key():
    class M(nnx.Module):
        def __init__(self, n):
            self.w = nnx.Param(jnp.ones(2))
            self.n = n

    traces = []

    @jax.jit
    def f(m):
        traces.append(m.n)
        return m.w[...] * m.n

    assert float(f(M(2)).sum()) == 4.0
    assert float(f(M(2)).sum()) == 4.0
    assert float(f(M(3)).sum()) == 6.0
    assert traces == [2, 3]
    out = f(M(2.5))
    assert out.dtype == jnp.float32 and float(out.sum()) == 5.0
    assert traces == [2, 3, 2.5]
    f(M(2.0))  # equal to 2 in Python, but a different static value
    assert traces == [2, 3, 2.5, 2.0] and type(traces[-1]) is float


def test_unflatten_unknown_entry_type_raises():
    g = gd(Linear(1, 1))
    bogus = nnx.GraphDef(object(), 0)
    with pytest.raises(TypeError, match="unknown GraphDef entry"):
        nnx.unflatten(bogus, {})
    assert g.num_leaves == 2
