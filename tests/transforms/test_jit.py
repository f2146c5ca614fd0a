"""`nnx.jit`: values vs plain `jax.jit`, commits, sharing, structure, rngs, errors, API."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import nnxfn as nnx
from tx_models import (
    MLP,
    Boom,
    Counter,
    Dropoutish,
    Linear,
    assert_unchanged,
    key_data,
    mlp_apply,
    mlp_params,
    snapshot,
)

X = jnp.linspace(-1.0, 1.0, 10).reshape(5, 2)


# -- plain arrays and module arguments -----------------------------------------
def test_plain_arrays_match_jax_jit():
    def f(x, y):
        return jnp.sin(x) * y + 1.0, x.sum()

    x, y = jnp.arange(3.0), jnp.ones(3) * 2
    got = nnx.jit(f)(x, y)
    want = jax.jit(f)(x, y)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b)


def test_module_arg_matches_plain_pytree():
    m = MLP(2, 8, 3, rngs=nnx.Rngs(0))
    got = nnx.jit(lambda m, x: m(x))(m, X)
    want = jax.jit(mlp_apply)(mlp_params(m), X)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_decorator_forms():
    @nnx.jit
    def f(m, x):
        return m(x)

    @nnx.jit()
    def g(m, x):
        return m(x)

    m = MLP(2, 4, 1, rngs=nnx.Rngs(1))
    np.testing.assert_allclose(f(m, X), g(m, X))
    np.testing.assert_allclose(f(m, X), mlp_apply(mlp_params(m), X), rtol=1e-6)
    assert f.__name__ == "f"


def test_kwargs_with_modules():
    m = Counter()

    @nnx.jit
    def f(x, *, model):
        return model(x)

    out = f(jnp.ones(3), model=m)
    np.testing.assert_allclose(out, [1.0, 2.0, 3.0])
    assert int(m.count[...]) == 1


# -- modules nested in pytrees --------------------------------------------------
def test_modules_in_lists_dicts_tuples_committed():
    a, b, c = Counter(), Counter(), Counter()

    @nnx.jit
    def f(ms, d, t, x):
        y = ms[0](x) + ms[1](x)
        y = y + d["c"](x)
        y = y + t[0](x) * t[1]
        return y

    out = f([a, b], {"c": c}, (a, 2.0), jnp.ones(3))
    w = jnp.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(out, w * 5)
    assert int(a.count[...]) == 2 and int(b.count[...]) == 1 and int(c.count[...]) == 1
    np.testing.assert_allclose(a.total[...], 2 * jnp.ones(3))


# -- shared references ------------------------------------------------------------
class Holder(nnx.Module):
    def __init__(self, sub):
        self.sub = sub


def test_shared_submodule_across_args_stays_shared():
    shared = Counter()
    h1, h2 = Holder(shared), Holder(shared)
    seen = {}

    @nnx.jit
    def f(h1, h2, x):
        seen["same"] = h1.sub is h2.sub
        h1.sub(x)
        return h2.sub.count[...]  # sees h1's write: same object inside

    out = f(h1, h2, jnp.ones(3))
    assert seen["same"]
    assert int(out) == 1
    assert h1.sub is h2.sub is shared
    assert int(shared.count[...]) == 1


def test_shared_variable_in_two_modules():
    v = nnx.BatchStat(jnp.zeros(()))
    a, b = Holder(v), Holder(v)

    @nnx.jit
    def f(a, b):
        a.sub[...] = a.sub[...] + 1.0
        b.sub[...] = b.sub[...] + 10.0

    f(a, b)
    assert a.sub is b.sub is v
    assert float(v[...]) == 11.0


def test_output_that_is_input_returns_same_object():
    m = Counter()
    inner = m

    @nnx.jit
    def f(m, x):
        m(x)
        return m, [m], {"k": m}

    out, lst, d = f(m, jnp.ones(3))
    assert out is inner and lst[0] is inner and d["k"] is inner
    assert int(m.count[...]) == 1


def test_new_module_returned_and_shares_input_submodule():
    sub = Counter()

    @nnx.jit
    def f(sub):
        return Holder(sub)

    h = f(sub)
    assert isinstance(h, Holder)
    assert h.sub is sub


# -- Variable and structural mutations ------------------------------------------
def test_variable_mutations_committed():
    m = Counter()
    step = nnx.jit(lambda m, x: m(x))
    for i in range(3):
        step(m, jnp.full(3, float(i)))
    assert int(m.count[...]) == 3
    np.testing.assert_allclose(m.total[...], jnp.full(3, 3.0))


def test_attribute_added_inside_is_committed():
    m = Counter()

    @nnx.jit
    def f(m, x):
        m.extra = nnx.BatchStat(x * 2)
        m.child = Counter()
        m.items = [nnx.Param(x), 3]

    f(m, jnp.ones(3))
    np.testing.assert_allclose(m.extra[...], 2 * jnp.ones(3))
    assert isinstance(m.child, Counter)
    np.testing.assert_allclose(m.child.w[...], [1.0, 2.0, 3.0])
    assert isinstance(m.items[0], nnx.Param) and m.items[1] == 3


def test_attribute_deleted_and_rebound_inside_is_committed():
    m = Counter()
    old_w = m.w

    @nnx.jit
    def f(m):
        del m.total
        m.w = nnx.Param(m.w[...] * 10)

    f(m)
    assert not hasattr(m, "total")
    assert m.w is not old_w
    np.testing.assert_allclose(m.w[...], [10.0, 20.0, 30.0])


def test_list_appended_inside_is_committed():
    class Seq(nnx.Module):
        def __init__(self):
            self.layers = [Counter()]

    s = Seq()
    first = s.layers[0]

    @nnx.jit
    def f(s):
        s.layers.append(Counter())
        s.layers[0](jnp.ones(3))

    f(s)
    assert len(s.layers) == 2 and s.layers[0] is first
    assert int(first.count[...]) == 1


# -- rng streams ------------------------------------------------------------------
def test_rngs_passed_in_advance_and_match_eager():
    rngs, ref = nnx.Rngs(0, dropout=1), nnx.Rngs(0, dropout=1)

    @nnx.jit
    def draw(rngs):
        return rngs.dropout(), rngs()

    k1, d1 = draw(rngs)
    k2, _ = draw(rngs)
    np.testing.assert_array_equal(key_data(k1), key_data(ref.dropout()))
    np.testing.assert_array_equal(key_data(d1), key_data(ref()))
    np.testing.assert_array_equal(key_data(k2), key_data(ref.dropout()))
    assert int(rngs.dropout.count[...]) == 2 and int(rngs.default.count[...]) == 2


def test_module_holding_rngs_draws_fresh_masks_each_call():
    m = Dropoutish(0.5, rngs=nnx.Rngs(dropout=3))
    f = nnx.jit(lambda m, x: m(x))
    a, b = f(m, jnp.ones(64)), f(m, jnp.ones(64))
    assert not np.array_equal(a, b)
    assert int(m.rngs.dropout.count[...]) == 2


def test_captured_rngs_raises_naming_the_fix():
    rngs = nnx.Rngs(0)
    before = snapshot(rngs)

    @nnx.jit
    def f(x):
        return x + jax.random.normal(rngs(), x.shape)

    with pytest.raises(RuntimeError, match=r"captured by closure.*Pass it as an argument"):
        f(jnp.ones(2))
    assert_unchanged(before, rngs)


def test_captured_module_write_raises():
    m = Counter()
    before = snapshot(m)

    @nnx.jit
    def f(x):
        return m(x)

    with pytest.raises(RuntimeError, match="nnx.jit"):
        f(jnp.ones(3))
    assert_unchanged(before, m)


def test_captured_module_read_only_is_fine():
    m = MLP(2, 3, 1, rngs=nnx.Rngs(0))
    f = nnx.jit(lambda x: m(x))
    np.testing.assert_allclose(f(X), mlp_apply(mlp_params(m), X), rtol=1e-6)


# -- exceptions ---------------------------------------------------------------------
def test_exception_inside_leaves_caller_unchanged():
    m, rngs = Counter(), nnx.Rngs(0)
    shared = Holder(m)
    before = snapshot(m, rngs, shared)

    @nnx.jit
    def f(m, rngs, shared, x):
        m(x)
        rngs()
        m.new_attr = nnx.Param(x)
        shared.sub = Counter()
        raise Boom("inside")

    with pytest.raises(Boom):
        f(m, rngs, shared, jnp.ones(3))
    assert_unchanged(before, m, rngs, shared)
    assert not hasattr(m, "new_attr") and shared.sub is m
    # still usable afterwards
    nnx.jit(lambda m, x: m(x))(m, jnp.ones(3))
    assert int(m.count[...]) == 1


# -- static / donate / methods ------------------------------------------------------
def test_static_argnums_decorator_with_args():
    traces = []

    @nnx.jit(static_argnums=1)
    def f(m, n, x):
        traces.append(n)
        for _ in range(n):
            x = m(x)
        return x

    m = Counter()
    np.testing.assert_allclose(f(m, 2, jnp.ones(3)), jnp.array([1.0, 4.0, 9.0]))
    f(m, 2, jnp.ones(3))
    f(m, 3, jnp.ones(3))
    assert traces == [2, 3]
    assert int(m.count[...]) == 7


def test_static_argnames():
    @nnx.jit(static_argnames="mode")
    def f(m, x, mode="double"):
        return m(x) * (2 if mode == "double" else 3)

    m = Counter()
    np.testing.assert_allclose(f(m, jnp.ones(3), mode="triple"), [3.0, 6.0, 9.0])
    np.testing.assert_allclose(f(m, jnp.ones(3), mode="double"), [2.0, 4.0, 6.0])
    assert int(m.count[...]) == 2


def test_donate_argnums_module_still_works():
    m = MLP(2, 8, 1, rngs=nnx.Rngs(0))
    p0 = mlp_params(m)

    @nnx.jit(donate_argnums=0)
    def sgd(m, x):
        g = nnx.grad(lambda m: (m(x) ** 2).mean())(m)
        for path, v in g.flat_state():
            var = m
            for k in path:
                var = getattr(var, k)
            var[...] = var[...] - 0.1 * v[...]
        return (m(x) ** 2).mean()

    ref_g = jax.grad(lambda p: (mlp_apply(p, X) ** 2).mean())(p0)
    ref_p = jax.tree.map(lambda p, g: p - 0.1 * g, p0, ref_g)
    loss1 = sgd(m, X)
    loss2 = sgd(m, X)  # uses the (donated, replaced) buffers again
    np.testing.assert_allclose(loss1, (mlp_apply(ref_p, X) ** 2).mean(), rtol=1e-5)
    assert float(loss2) < float(loss1)
    np.testing.assert_allclose(m(X), mlp_apply(mlp_params(m), X))


def test_donated_unchanged_module_still_readable():
    m = Counter()
    f = nnx.jit(lambda m, x: x @ m.w, donate_argnums=0)
    assert float(f(m, jnp.ones(3))) == 6.0
    assert float(f(m, jnp.ones(3))) == 6.0
    np.testing.assert_allclose(m.w[...], [1.0, 2.0, 3.0])


class Model(nnx.Module):
    def __init__(self):
        self.c = Counter()

    @nnx.jit
    def __call__(self, x):
        return self.c(x)

    @nnx.jit(static_argnums=2)
    def scaled(self, x, k):
        return self.c(x) * k


def test_jit_decorated_methods():
    m = Model()
    np.testing.assert_allclose(m(jnp.ones(3)), [1.0, 2.0, 3.0])
    np.testing.assert_allclose(m.scaled(jnp.ones(3), 4), [4.0, 8.0, 12.0])
    assert int(m.c.count[...]) == 2


def test_unbound_method_and_bound_method_error():
    m = Counter()
    out = nnx.jit(Counter.__call__)(m, jnp.ones(3))
    np.testing.assert_allclose(out, [1.0, 2.0, 3.0])
    assert int(m.count[...]) == 1
    with pytest.raises(ValueError, match=r"bound method Counter.__call__.*nnx.jit\(Counter.__call__\)\(obj"):
        nnx.jit(m.__call__)


# -- lower / trace / eval_shape ---------------------------------------------------------
def test_lower_compile_and_trace():
    m = MLP(2, 4, 1, rngs=nnx.Rngs(0))
    f = nnx.jit(lambda m, x: m(x))
    lowered = f.lower(m, X)
    assert "stablehlo" in lowered.as_text() or "func" in lowered.as_text()
    compiled = lowered.compile()
    assert compiled is not None
    traced = f.trace(m, X)
    assert traced.jaxpr is not None
    text = str(traced.jaxpr)
    assert "tanh" in text


def test_eval_shape_method():
    m = Counter()
    f = nnx.jit(lambda m, x: m(x))
    before = snapshot(m)
    out = f.eval_shape(m, jnp.ones(3))
    assert isinstance(out, jax.ShapeDtypeStruct) and out.shape == (3,)
    assert_unchanged(before, m)


# -- retracing -----------------------------------------------------------------------------
def test_retrace_only_when_structure_changes():
    traces = []

    @nnx.jit
    def f(m, x):
        traces.append(1)
        return m(x)

    m = Counter()
    f(m, jnp.ones(3))
    f(m, jnp.ones(3) * 2)
    m.w[...] = jnp.zeros(3)  # value write: no retrace
    f(m, jnp.ones(3))
    assert len(traces) == 1
    m2 = Counter()  # same structure, other object: no retrace
    f(m2, jnp.ones(3))
    assert len(traces) == 1
    m.extra = nnx.Param(jnp.ones(2))  # structure change: retrace
    f(m, jnp.ones(3))
    assert len(traces) == 2
    f(m, jnp.ones(3))
    assert len(traces) == 2
    f(Counter(4), jnp.ones(4))  # new shapes: retrace (like jax.jit)
    assert len(traces) == 3


def test_no_retrace_after_inside_structural_change_settles():
    traces = []

    @nnx.jit
    def f(m):
        traces.append(1)
        if not hasattr(m, "cache"):
            m.cache = nnx.Cache(jnp.zeros(()))
        m.cache[...] = m.cache[...] + 1

    m = Counter()
    f(m)
    f(m)
    f(m)
    assert float(m.cache[...]) == 3.0
    assert len(traces) == 2


def test_in_place_list_edit_outside_is_noticed():
    class Seq(nnx.Module):
        def __init__(self):
            self.layers = [Counter()]

    s = Seq()
    f = nnx.jit(lambda s, x: sum(l(x).sum() for l in s.layers))
    assert float(f(s, jnp.ones(3))) == 6.0
    s.layers.append(Counter())
    assert float(f(s, jnp.ones(3))) == 12.0
    assert int(s.layers[1].count[...]) == 1


# -- keep_unused, shardings -------------------------------------------------------------
def test_keep_unused():
    def f(m, x, unused):
        return m(x)

    m, u = Counter(), jnp.ones((7, 11))
    dropped = nnx.jit(f).lower(m, jnp.ones(3), u).as_text()
    kept = nnx.jit(f, keep_unused=True).lower(m, jnp.ones(3), u).as_text()
    assert "7x11" not in dropped
    assert "7x11" in kept


def test_in_and_out_shardings_single_device():
    mesh = jax.make_mesh((1,), ("x",))
    rep = NamedSharding(mesh, P())
    row = NamedSharding(mesh, P("x"))
    m = Counter()
    f = nnx.jit(lambda m, x: m(x), in_shardings=(rep, row), out_shardings=row)
    out = f(m, jnp.ones(3))
    np.testing.assert_allclose(out, [1.0, 2.0, 3.0])
    assert out.sharding == row
    assert int(m.count[...]) == 1


def test_state_sharding_per_filter():
    mesh = jax.make_mesh((1,), ("x",))
    rep = NamedSharding(mesh, P())
    m = Counter()
    spec = nnx.StateSharding({nnx.Param: rep, ...: None})
    f = nnx.jit(lambda m, x: m(x), in_shardings=(spec, rep))
    np.testing.assert_allclose(f(m, jnp.ones(3)), [1.0, 2.0, 3.0])
    assert int(m.count[...]) == 1


def test_linear_with_rngs_is_deterministic_under_jit():
    rngs_a, rngs_b = nnx.Rngs(5), nnx.Rngs(5)
    a = nnx.jit(lambda r: Linear(3, 2, rngs=r))(rngs_a)
    b = Linear(3, 2, rngs=rngs_b)
    np.testing.assert_allclose(a.kernel[...], b.kernel[...])
    assert int(rngs_a.params.count[...]) == int(rngs_b.params.count[...]) == 2


def _donated_inputs(lowered) -> int:
    return lowered.as_text().count("tf.aliasing_output") + lowered.as_text().count("jax.buffer_donor")


def test_donate_argnames_donates_the_module_by_name_positional_or_keyword():
    def f(m, x):
        m.w[...] = m.w[...] * 2
        return x @ m.w

    by_num = nnx.jit(f, donate_argnums=0)
    by_name = nnx.jit(f, donate_argnames="m")
    plain = nnx.jit(f)
    m = Counter()
    donated = _donated_inputs(by_num.lower(m, jnp.ones(3)))
    assert donated >= 1
    assert _donated_inputs(plain.lower(m, jnp.ones(3))) == 0
    assert _donated_inputs(by_name.lower(m, jnp.ones(3))) == donated
    assert _donated_inputs(by_name.lower(m=m, x=jnp.ones(3))) == donated
    assert float(by_name(m=m, x=jnp.ones(3))) == 12.0  # w doubled to [2, 4, 6]
    assert float(by_name(m, jnp.ones(3))) == 24.0
    np.testing.assert_allclose(m.w[...], [4.0, 8.0, 12.0])


def test_jit_returns_refs_argument_refs_as_themselves_new_refs_as_new():
    r = jax.new_ref(jnp.array(1.0))

    @nnx.jit
    def f(r, x):
        r[...] += x
        return jax.new_ref(r[...] * 10.0), r, x * 2

    for step in (1, 2):  # second call: cached compiled function, same answers
        new, same, y = f(r, jnp.array(1.0))
        assert same is r
        assert isinstance(new, jax.Ref)
        assert float(r[...]) == 1.0 + step
        assert float(new[...]) == 10.0 * (1.0 + step)
        assert float(y) == 2.0


def test_jit_and_eval_shape_with_hijax_variables():
    with nnx.var_defaults(hijax=True):
        abstract = nnx.eval_shape(lambda: nnx.Linear(1, 2, rngs=nnx.Rngs(0)))
        made = nnx.jit(lambda: nnx.Linear(1, 2, rngs=nnx.Rngs(0)))()
    assert isinstance(abstract.kernel.get_value(), jax.ShapeDtypeStruct)
    assert abstract.kernel.shape == (1, 2)
    ref = nnx.Linear(1, 2, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(made.kernel[...], ref.kernel[...])
