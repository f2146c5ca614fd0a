"""Variables: reads, writes, metadata, dunders, pickling, pytrees, subclasses."""

import copy
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxfn as nnx


class LoraParam(nnx.Param):
    pass


class WithAttrs(nnx.Variable):
    """A user subclass that carries default metadata."""

    def __init__(self, value, **metadata):
        metadata.setdefault("kind", "special")
        super().__init__(value, **metadata)


def _eq(a, b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# -- reads ------------------------------------------------------------------
def test_reads_in_every_form():
    x = jnp.arange(6.0).reshape(2, 3)
    v = nnx.Param(x)
    assert v[...] is x
    assert v.value is x
    assert v.get_value() is x
    assert v.raw_value is x
    _eq(v[0], x[0])
    _eq(v[:, 1], x[:, 1])
    assert v.shape == (2, 3) and v.dtype == jnp.float32 and v.ndim == 2
    _eq(v.T, x.T)
    assert float(v.sum()) == 15.0
    _eq(jnp.asarray(v), x)
    _eq(np.asarray(v), np.asarray(x))
    _eq(jnp.sin(v), jnp.sin(x))
    assert len(v) == 2
    _eq(list(v)[1], x[1])


def test_scalar_conversions():
    v = nnx.Variable(jnp.array(3.0))
    assert float(v) == 3.0 and int(v) == 3 and bool(v)
    assert not bool(nnx.Variable(jnp.array(0.0)))


# -- writes -----------------------------------------------------------------
def test_writes_in_every_form():
    v = nnx.Param(jnp.zeros(3))
    v[...] = jnp.ones(3)
    _eq(v[...], jnp.ones(3))
    v.value = jnp.full(3, 2.0)
    _eq(v.value, jnp.full(3, 2.0))
    v.set_value(jnp.full(3, 3.0))
    _eq(v.get_value(), jnp.full(3, 3.0))
    v[1] = 10.0
    _eq(v[...], jnp.array([3.0, 10.0, 3.0]))
    v[...] = nnx.Param(jnp.arange(3.0))  # a Variable is unwrapped
    assert isinstance(v.raw_value, jax.Array)
    _eq(v[...], jnp.arange(3.0))
    v.value = nnx.Variable(jnp.ones(3))
    assert isinstance(v.raw_value, jax.Array)


def test_ellipsis_write_keeps_dtype_and_checks_shape():
    v = nnx.Param(jnp.zeros(3, jnp.float32))
    v[...] = jnp.ones(3, jnp.int32)  # cast into the Variable's dtype, as in Flax
    assert v.dtype == jnp.float32
    _eq(v[...], jnp.ones(3))
    with pytest.raises((ValueError, TypeError)):
        v[...] = jnp.ones((2, 2))  # not broadcastable to (3,)
    v.value = jnp.ones((2, 2), jnp.int32)  # `.value =` replaces outright
    assert v.shape == (2, 2) and v.dtype == jnp.int32
    c = nnx.Variable(jnp.zeros((), jnp.uint32))
    c[...] = c[...] + 1
    assert c.dtype == jnp.uint32 and int(c) == 1


def test_write_broadcasts_scalar_with_ellipsis():
    v = nnx.Param(jnp.zeros(3))
    v[...] = 5.0
    _eq(v[...], jnp.full(3, 5.0))


def test_in_place_operators_write_the_variable():
    m = nnx.Module()
    m.count = nnx.BatchStat(jnp.array(1.0))
    count = m.count
    m.count += 2.0
    assert m.count is count and type(m.count) is nnx.BatchStat
    _eq(count[...], 3.0)
    count *= 2.0
    _eq(m.count[...], 6.0)
    m.count -= 1.0
    m.count /= 5.0
    _eq(count[...], 1.0)
    v = nnx.Param(jnp.eye(2))
    v @= jnp.full((2, 2), 2.0)
    assert isinstance(v, nnx.Param)
    _eq(v[...], jnp.full((2, 2), 2.0))


# -- metadata ---------------------------------------------------------------
def test_metadata_get_set_and_attribute_access():
    v = nnx.Param(jnp.ones(2), out_sharding=("data",), tag="w")
    # Flax always reports the mode flags too (`sharding=` is a deprecated alias, see below)
    required = {"hijax": False, "ref": False, "eager_sharding": True}
    assert v.get_metadata() == {"out_sharding": ("data",), "tag": "w", **required}
    assert v.get_metadata(exclude_required=True) == {"out_sharding": ("data",), "tag": "w"}
    assert v.get_metadata("out_sharding") == ("data",)
    assert v.get_metadata("missing", 7) == 7
    assert v.out_sharding == ("data",) and v.tag == "w"
    v.set_metadata("out_sharding", ["model"])  # lists are frozen to tuples
    assert v.out_sharding == ("model",)
    v.set_metadata(note=1)
    assert v.note == 1
    v.set_metadata({"only": 2})
    assert v.get_metadata(exclude_required=True) == {"only": 2}
    v.other = "x"  # attribute assignment writes metadata
    assert v.get_metadata("other") == "x"
    assert v.metadata_items() == (("only", 2), ("other", "x"))
    with pytest.raises(AttributeError):
        v.not_metadata_and_not_on_array


def test_metadata_from_variable_argument():
    inner = nnx.Param(jnp.ones(1), a=1)
    v = nnx.Param(inner, b=2)
    assert v.get_metadata(exclude_required=True) == {"a": 1, "b": 2}
    assert v.raw_value is inner.raw_value


def test_replace_and_copy():
    v = nnx.Param(jnp.ones(2), tag="t")
    r = v.replace(jnp.zeros(2), tag="u")
    assert type(r) is nnx.Param and r is not v
    _eq(r[...], jnp.zeros(2))
    assert r.tag == "u" and v.tag == "t"
    same = v.replace(tag="z")
    assert same.raw_value is v.raw_value
    c = v.copy()
    c[...] = jnp.zeros(2)
    _eq(v[...], jnp.ones(2))
    assert c.get_metadata() == v.get_metadata()


def test_type_property():
    assert nnx.Param(jnp.ones(1)).type is nnx.Param
    assert LoraParam(jnp.ones(1)).type is LoraParam


# -- dunders -------------------------------------------------------------------
def test_arithmetic_dunders():
    x = jnp.array([1.0, 2.0, 4.0])
    v = nnx.Param(x)
    w = nnx.Param(jnp.array([2.0, 2.0, 2.0]))
    _eq(v + 1, x + 1)
    _eq(1 + v, 1 + x)
    _eq(v - 1, x - 1)
    _eq(1 - v, 1 - x)
    _eq(v * 2, x * 2)
    _eq(2 * v, 2 * x)
    _eq(v / 2, x / 2)
    _eq(2 / v, 2 / x)
    _eq(v // 2, x // 2)
    _eq(v % 3, x % 3)
    _eq(v**2, x**2)
    _eq(2**v, 2**x)
    _eq(v + w, x + 2)
    _eq(v * w, x * 2)
    _eq(-v, -x)
    _eq(+v, x)
    _eq(abs(nnx.Param(-x)), x)
    _eq(v < 2, x < 2)
    _eq(v >= 2, x >= 2)
    _eq(v == w, x == 2)
    _eq(v != w, x != 2)


def test_integer_and_bitwise_dunders():
    x = jnp.array([1, 2, 6], jnp.int32)
    v = nnx.Variable(x)
    _eq(v & 3, x & 3)
    _eq(v | 8, x | 8)
    _eq(v ^ 1, x ^ 1)
    _eq(v << 1, x << 1)
    _eq(v >> 1, x >> 1)
    _eq(~v, ~x)
    _eq(3 & v, 3 & x)


def test_matmul_both_sides():
    x = jnp.ones((4, 2))
    k = jnp.arange(6.0).reshape(2, 3)
    v = nnx.Param(k)
    out = x @ v
    assert isinstance(out, jax.Array)
    _eq(out, x @ k)
    _eq(v @ jnp.ones(3), k @ jnp.ones(3))
    a = nnx.Param(jnp.ones((4, 2)))
    _eq(a @ v, jnp.ones((4, 2)) @ k)


def test_hash_is_identity():
    a, b = nnx.Param(jnp.ones(1)), nnx.Param(jnp.ones(1))
    assert hash(a) != hash(b)
    assert len({a, b, a}) == 2


def test_repr_shows_shape_and_metadata_not_values():
    v = nnx.Param(jnp.full((2, 3), 123.0), out_sharding=("data", None))
    text = repr(v)
    assert text.startswith("Param(")
    assert "value=Array(shape=(2, 3), dtype=float32)" in text
    assert "out_sharding=('data', None)" in text
    assert "123" not in text


# -- copies and pytrees -----------------------------------------------------------
def test_pickle_roundtrip():
    v = LoraParam(jnp.arange(3.0), tag="lora")
    back = pickle.loads(pickle.dumps(v))
    assert type(back) is LoraParam and back is not v
    assert back.tag == "lora"
    _eq(back[...], v[...])


def test_deepcopy_and_copy():
    v = nnx.BatchStat(jnp.arange(3.0), note=1)
    d = copy.deepcopy(v)
    assert type(d) is nnx.BatchStat and d.note == 1
    d[...] = jnp.zeros(3)
    _eq(v[...], jnp.arange(3.0))
    pair = copy.deepcopy([v, v])
    assert pair[0] is pair[1] and pair[0] is not v
    shallow = copy.copy(v)
    assert shallow is not v and shallow.raw_value is v.raw_value


def test_variables_are_pytrees():
    v = nnx.Param(jnp.ones(2), tag="t")
    leaves, treedef = jax.tree.flatten(v)
    assert len(leaves) == 1 and leaves[0] is v.raw_value
    doubled = jax.tree.map(lambda x: x * 2, v)
    assert type(doubled) is nnx.Param and doubled.tag == "t"
    _eq(doubled[...], jnp.full(2, 2.0))
    keys = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(v)[0]]
    assert keys == [".value"]
    out = jax.jit(lambda v: v * 3)(v)
    _eq(out, jnp.full(2, 3.0))
    same = jax.jit(lambda v: v)(v)
    assert type(same) is nnx.Param and same.tag == "t"
    grad = jax.grad(lambda v: (v[...] ** 2).sum())(v)
    assert type(grad) is nnx.Param
    _eq(grad[...], jnp.full(2, 2.0))


def test_user_subclasses():
    v = LoraParam(jnp.ones(2))
    assert isinstance(v, nnx.Param) and isinstance(v, nnx.Variable)
    assert type(jax.tree.map(lambda x: x, v)) is LoraParam
    w = WithAttrs(jnp.ones(1))
    assert w.kind == "special"
    m = nnx.Module()
    m.w, m.l = w, v
    g, params, rest = nnx.split(m, nnx.Param, ...)
    assert list(params) == ["l"] and list(rest) == ["w"]
    new = nnx.merge(g, params, rest)
    assert type(new.w) is WithAttrs and new.w.kind == "special"
    assert type(new.l) is LoraParam


def test_generic_subscription():
    v = nnx.Param[jax.Array](jnp.ones(2))
    assert type(v) is nnx.Param
    _eq(v[...], jnp.ones(2))


def test_builtin_variable_hierarchy():
    assert issubclass(nnx.Perturbation, nnx.Intermediate)
    assert issubclass(nnx.RngKey, nnx.RngState) and issubclass(nnx.RngCount, nnx.RngState)
    assert issubclass(nnx.OptArray, nnx.OptState)
    for t in (nnx.Param, nnx.BatchStat, nnx.Cache, nnx.Intermediate, nnx.OptState):
        assert issubclass(t, nnx.Variable)


def test_deprecated_sharding_names_become_out_sharding():
    # as in Flax: `sharding=`/`sharding_names=` are stored as `out_sharding`, and
    # `v.sharding` is the array's own sharding
    for old in ("sharding", "sharding_names"):
        with pytest.warns(DeprecationWarning, match="out_sharding"):
            v = nnx.Param(jnp.ones(2), **{old: ("data",)})
        assert v.get_metadata(exclude_required=True) == {"out_sharding": ("data",)}
        assert v.sharding == v[...].sharding
    with pytest.warns(DeprecationWarning):
        assert v.sharding_names == ("data",)
