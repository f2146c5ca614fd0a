import jax
import jax.numpy as jnp
import pytest

import nnxfn as nnx


def _eq(a, b):
    assert jnp.allclose(jnp.asarray(a), jnp.asarray(b)), (a, b)


class AddThree(nnx.Param):
    def get_value(self, **kwargs):
        return super().get_value(**kwargs) + 3


class AddSeven(nnx.Param):
    def set_value(self, value, **kwargs):
        super().set_value(value + 7, **kwargs)


def test_overridden_get_and_set_value_are_used_by_indexing_and_arithmetic():
    x = AddThree(jnp.array(1.0))
    _eq(x[...], 4.0)
    _eq(x + 1, 5.0)
    assert x.get_raw_value() == 1.0
    y = AddSeven(jnp.array(1.0))
    y[...] = 5.0
    _eq(y.get_raw_value(), 12.0)
    y.value = 1.0
    _eq(y[...], 8.0)


def test_required_metadata_and_set_metadata_rules():
    v = nnx.Variable(jnp.array(1.0))
    assert v.get_metadata() == {"hijax": False, "ref": False, "eager_sharding": True}
    v.set_metadata({"b": 3, "hijax": False})
    assert v.get_metadata(exclude_required=True) == {"b": 3}
    with pytest.raises(ValueError, match="Cannot change `hijax`"):
        v.set_metadata(hijax=True)
    assert v.has_metadata("b") and not v.has_metadata("zz")
    v.del_metadata("b")
    assert not v.has_metadata("b")


def test_var_defaults_context_decorator_and_bare_call():
    assert nnx.var_defaults().hijax is False and dict(nnx.var_defaults()) == {"hijax": False, "ref": False}
    with nnx.var_defaults(hijax=True):
        assert nnx.Param(1).hijax
        with nnx.var_defaults(ref=True):
            assert nnx.var_defaults() == nnx.variablelib.VarDefaults(True, True)
        nnx.var_defaults(hijax=False)  # bare call: until the block ends
        assert not nnx.Param(1).hijax
    assert nnx.var_defaults().hijax is False

    @nnx.var_defaults(ref=True)
    def make():
        return nnx.Param(jnp.ones(2))

    assert nnx.var_defaults().ref is False
    made = make()
    assert made.ref and isinstance(made.get_raw_value(), jax.Ref)
    assert nnx.Variable(1, ref=False).ref is False


@pytest.mark.parametrize("hijax", [True, False])
@pytest.mark.parametrize("ref", [True, False])
def test_modes_by_argument_copy_and_with_vars(hijax, ref):
    for v in (
        nnx.Variable(jnp.array(1), hijax=hijax, ref=ref),
        nnx.Variable(jnp.array(1)).copy(hijax=hijax, ref=ref),
        nnx.with_vars(nnx.Variable(jnp.array(1)), hijax=hijax, ref=ref),
    ):
        assert (v.hijax, v.ref) == (hijax, ref)
        assert isinstance(v, nnx.Variable)
        assert isinstance(v, nnx.variablelib.HijaxVariable) == hijax
        assert isinstance(v.get_raw_value(), jax.Ref) == ref
        _eq(v[...], 1)


def test_hijax_writes_inside_plain_jax_transforms_reach_the_variable():
    v = nnx.Param(jnp.array(1), a="hi", hijax=True)
    assert isinstance(v, nnx.Param)

    @jax.jit
    def set_(v, a):
        v[...] = a
        v[...] += 5
        assert v.a == "hi"
        return v + 2

    _eq(set_(v, 10), 17)
    _eq(v[...], 15)
    low = nnx.with_vars(v, hijax=False)
    assert not low.hijax and type(low) is nnx.Param
    _eq(low[...], 15)

    d = nnx.Variable({"a": jnp.array(0), "b": jnp.array(2)}, hijax=True)
    jax.jit(lambda d: d.__setitem__("a", d["a"] + 1))(d)
    _eq(d["a"], 1)

    c = nnx.Variable(jnp.array(3.0), hijax=True)

    def body(carry, _):
        c[...] = c[...] + 1.0
        return carry, None

    jax.lax.scan(body, None, None, length=5)
    _eq(c[...], 8.0)


def test_hijax_value_may_change_structure_inside_plain_jax_jit():
    metrics = nnx.Variable({}, hijax=True)
    assert len(metrics) == 0

    @jax.jit
    def record(x, metrics):
        metrics["total"] = x.sum()
        metrics["rows"] = [x[0], x[1]]

    record(jnp.arange(6.0).reshape(2, 3), metrics)
    assert sorted(metrics.get_value()) == ["rows", "total"]
    _eq(metrics["total"], 15.0)
    _eq(metrics["rows"][1], [3.0, 4.0, 5.0])
    jax.jit(lambda m: m.__delitem__("rows"))(metrics)  # and shrink again
    assert list(metrics.get_value()) == ["total"]

    made = nnx.jit(lambda: nnx.Variable(jnp.array(1.0), hijax=True))()  # made inside a trace
    jax.jit(lambda v: v.set_value({"was": v[...]}))(made)
    _eq(made["was"], 1.0)


def test_with_vars_filter_shares_other_variables_and_rejects_duplicates():
    class Foo(nnx.Module):
        def __init__(self):
            self.a = nnx.Param(jnp.array(1.0))
            self.b = nnx.BatchStat(jnp.array(2.0))

    m = Foo()
    m2 = nnx.with_vars(m, ref=True, only=nnx.BatchStat)
    assert m2 is not m and m2.a is m.a and m2.b.ref and not m.b.ref
    m2.b[...] = 5.0
    _eq(m.b[...], 2.0)
    m.c = m.a
    with pytest.raises(ValueError, match="Found duplicate at paths"):
        nnx.with_vars(m, ref=True)
    both = nnx.with_vars(m, ref=True, allow_duplicates=True)
    assert both.a.ref


def test_set_metadata_function_and_from_metadata():
    class M(nnx.Module):
        def __init__(self):
            self.v = nnx.Variable(jnp.array(0.0))
            self.p = nnx.Param(jnp.array(1.0))

    m = M()
    nnx.set_metadata(m, foo="bar")
    nnx.set_metadata(m, differentiable=False, only=nnx.Param)
    assert m.v.foo == "bar" and m.p.foo == "bar"
    assert not m.v.has_metadata("differentiable") and m.p.differentiable is False
    made = nnx.Param.from_metadata(1, {"a": "hi", "hijax": True, "ref": False})
    assert isinstance(made, nnx.Param) and made.hijax and made.a == "hi"


def test_variable_names_registry():
    assert nnx.variable_type_from_name("params") is nnx.Param
    assert nnx.variable_name_from_type(nnx.BatchStat) == "batch_stats"
    with pytest.raises(ValueError, match="not registered"):
        nnx.variable_type_from_name("no_such_collection")
    made = nnx.variable_type_from_name("my_coll_for_test", allow_register=True)
    assert issubclass(made, nnx.Variable) and nnx.variable_name_from_type(made) == "my_coll_for_test"
    with pytest.raises(ValueError, match="already mapped"):
        nnx.register_variable_name("params", nnx.Cache)


class _StatModel(nnx.Module):
    def __init__(self):
        self.w = nnx.Param(jnp.array([1.0, 2.0, 3.0]))
        self.s = nnx.BatchStat(jnp.zeros(()))

    def __call__(self, x):
        y = x @ self.w
        self.s[...] = y.mean()  # a value that carries a derivative, into a Ref made outside
        return (y**2).sum()


def test_hijax_graphdef_merges_plain_params_and_keeps_state_writes():
    with nnx.var_defaults(hijax=True):
        model = _StatModel()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    plain = nnx.with_vars(params, hijax=False)
    assert not plain["w"].hijax and isinstance(plain["w"], type(model.w))  # a mode is not a type

    def loss(p):
        return nnx.merge(graphdef, p, rest)(x)

    x = jnp.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    grads = jax.jit(jax.grad(loss))(plain)
    y = x @ jnp.array([1.0, 2.0, 3.0])
    _eq(grads["w"][...], 2 * x.T @ y)
    _eq(model.s[...], y.mean())  # the statistic reached the model's own Ref
    assert not isinstance(model.w, nnx.BatchStat) and not isinstance(plain["w"], type(model.s))


@pytest.mark.parametrize("hijax,ref", [(True, False), (False, True), (True, True)])
def test_mode_variables_pickle(hijax, ref):
    import pickle

    v = nnx.Param(jnp.array([1.0, 2.0]), hijax=hijax, ref=ref)
    back = pickle.loads(pickle.dumps(v))
    assert type(back) is type(v) and back.hijax == hijax and back.ref == ref
    _eq(back[...], [1.0, 2.0])
