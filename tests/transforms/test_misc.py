"""`nnx.eval_shape`, `make_jaxpr`, `checkify`, `shard_map`."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify as jcheckify
from jax.sharding import PartitionSpec as P

import nnxfn as nnx
from tx_models import MLP, Boom, Counter, assert_unchanged, mlp_apply, mlp_params, snapshot

AUTO = jax.sharding.AxisType.Auto


# -- eval_shape ----------------------------------------------------------------------------------------
def test_eval_shape_creates_abstract_module():
    abstract = nnx.eval_shape(lambda: MLP(2, 8, 3, rngs=nnx.Rngs(0)))
    assert isinstance(abstract, MLP)
    k = abstract.l1.kernel
    assert isinstance(k, nnx.Param)
    assert isinstance(k[...], jax.ShapeDtypeStruct) and k.shape == (2, 8)
    leaves = jax.tree_util.tree_leaves(abstract)
    assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)


def test_eval_shape_leaves_inputs_untouched():
    rngs, m = nnx.Rngs(0), Counter()
    before = snapshot(rngs, m)
    abstract = nnx.eval_shape(lambda r: MLP(2, 4, 1, rngs=r), rngs)
    assert abstract.l2.bias.shape == (1,)
    out = nnx.eval_shape(lambda m, x: m(x), m, jnp.ones(3))
    assert isinstance(out, jax.ShapeDtypeStruct) and out.shape == (3,)
    assert_unchanged(before, rngs, m)


def test_eval_shape_returning_written_input_gives_abstract_copy():
    m = Counter()
    before = snapshot(m)

    def f(m):
        m(jnp.ones(3))
        return m

    out = nnx.eval_shape(f, m)
    assert isinstance(out, Counter) and out is not m
    assert isinstance(out.count[...], jax.ShapeDtypeStruct)
    assert_unchanged(before, m)


def test_eval_shape_returning_an_unwritten_input_gives_abstract_copy():
    m = MLP(2, 4, 1, rngs=nnx.Rngs(0))
    out = nnx.eval_shape(lambda m: m, m)
    assert out is not m and out.l1 is not m.l1
    k = out.l1.kernel[...]
    assert isinstance(k, jax.ShapeDtypeStruct) and k.shape == (2, 4) and k.dtype == jnp.float32
    assert isinstance(m.l1.kernel[...], jax.Array)


def _sharded_linear():
    init = nnx.with_partitioning(nnx.initializers.lecun_normal(), ("data", "model"))
    return nnx.Linear(2, 4, kernel_init=init, rngs=nnx.Rngs(0))


def test_eval_shape_under_a_mesh_shards_returned_variables_by_their_annotation():
    mesh = jax.make_mesh((1, 1), ("data", "model"), axis_types=(AUTO, AUTO))
    with jax.set_mesh(mesh):
        concrete = _sharded_linear()
        made = nnx.eval_shape(_sharded_linear)
        returned = nnx.eval_shape(lambda m: m, concrete)
    for m in (made, returned):
        kernel, bias = m.kernel[...].sharding, m.bias[...].sharding
        assert kernel.spec == P("data", "model") and bias.spec == P()  # no annotation: P()
        assert kernel.mesh.axis_names == ("data", "model") and kernel.mesh.axis_sizes == (1, 1)
    assert concrete.kernel.out_sharding == ("data", "model")
    unmeshed = nnx.eval_shape(_sharded_linear)  # no mesh: nothing to place on
    assert unmeshed.kernel[...].sharding is None and unmeshed.bias[...].sharding is None


def test_eval_shape_uses_a_variables_own_mesh_metadata():
    mesh = jax.make_mesh((1,), ("model",), axis_types=(AUTO,))

    class Holder(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.ones((2, 4)), out_sharding=(None, "model"), mesh=mesh)

    out = nnx.eval_shape(Holder)
    assert out.w[...].sharding == jax.sharding.NamedSharding(mesh, P(None, "model"))


def test_eval_shape_matches_jax_on_plain_arrays():
    f = lambda x, y: (x @ y, x.sum())  # noqa: E731
    got = nnx.eval_shape(f, jnp.ones((2, 3)), jnp.ones((3, 5)))
    want = jax.eval_shape(f, jnp.ones((2, 3)), jnp.ones((3, 5)))
    assert got == want


def test_eval_shape_exception_leaves_unchanged():
    m = Counter()
    before = snapshot(m)

    def f(m):
        m(jnp.ones(3))
        m.extra = nnx.Param(jnp.ones(2))
        raise Boom()

    with pytest.raises(Boom):
        nnx.eval_shape(f, m)
    assert_unchanged(before, m)


# -- make_jaxpr ---------------------------------------------------------------------------------------------
def test_make_jaxpr_inputs_are_state_leaves_and_evaluates():
    m = MLP(2, 4, 3, rngs=nnx.Rngs(0))
    x = jnp.ones((5, 2))
    closed = nnx.make_jaxpr(lambda m, x: m(x))(m, x)
    assert len(closed.jaxpr.invars) == 4 + 1  # 4 params + x
    assert "tanh" in str(closed)
    leaves = [v[...] for _, v in nnx.state(m).flat_state()] + [x]
    results = jax.core.eval_jaxpr(closed.jaxpr, closed.consts, *leaves)
    assert len(results) == 1  # the output; nothing written, so no state leaves out
    np.testing.assert_allclose(results[0], mlp_apply(mlp_params(m), x), rtol=1e-6)


def test_make_jaxpr_with_writes_does_not_commit():
    m = Counter()
    before = snapshot(m)
    closed = nnx.make_jaxpr(lambda m, x: m(x))(m, jnp.ones(3))
    assert len(closed.jaxpr.outvars) == 1 + 2  # output + count + total
    assert_unchanged(before, m)


# -- checkify ------------------------------------------------------------------------------------------------
def _checked(m, x):
    jcheckify.check(jnp.all(x > 0), "x must be positive, got {x}", x=x.sum())
    return m(x)


def test_checkify_passes_and_commits():
    m = Counter()
    err, out = nnx.checkify(_checked)(m, jnp.ones(3))
    assert err.get() is None
    np.testing.assert_allclose(out, [1.0, 2.0, 3.0])
    assert int(m.count[...]) == 1


def test_checkify_reports_error():
    m = Counter()
    err, out = nnx.checkify(_checked)(m, -jnp.ones(3))
    assert "x must be positive" in err.get()
    with pytest.raises(jcheckify.JaxRuntimeError, match="x must be positive"):
        err.throw()


def test_checkify_under_jit_and_float_checks():
    m = Counter()
    f = nnx.jit(nnx.checkify(lambda m, x: m(jnp.log(x)), errors=jcheckify.float_checks))
    err, _ = f(m, jnp.ones(3))
    assert err.get() is None
    err, _ = f(m, -jnp.ones(3))
    assert err.get() is not None and "nan" in err.get().lower()
    assert int(m.count[...]) == 2


# -- shard_map -------------------------------------------------------------------------------------------------
def test_shard_map_one_device_mesh():
    mesh = jax.make_mesh((1,), ("x",), axis_types=(AUTO,))
    m = Counter()
    xs = jnp.arange(6.0).reshape(2, 3)

    def f(m, x):
        m.count[...] = m.count[...] + 1
        return jax.lax.psum((x * m.w).sum(0), "x")

    out = nnx.shard_map(f, mesh=mesh, in_specs=(P(), P("x")), out_specs=P())(m, xs)
    np.testing.assert_allclose(out, (xs * jnp.arange(1.0, 4.0)).sum(0))
    assert int(m.count[...]) == 1


def test_shard_map_state_axes_and_decorator():
    mesh = jax.make_mesh((1,), ("x",), axis_types=(AUTO,))

    class Stacked(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.arange(6.0).reshape(2, 3))
            self.calls = nnx.BatchStat(jnp.array(0))

    m = Stacked()
    spec = nnx.StateAxes({nnx.Param: P("x"), ...: P()})

    @nnx.shard_map(mesh=mesh, in_specs=(spec, P()), out_specs=P("x"))
    def f(m, x):
        m.calls[...] = m.calls[...] + 1
        return m.w[...] * x

    out = f(m, jnp.ones(3))
    np.testing.assert_allclose(out, m.w[...])
    assert int(m.calls[...]) == 1


def test_shard_map_eight_cpu_devices_subprocess():
    script = textwrap.dedent(
        """
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import PartitionSpec as P
        import nnxfn as nnx
        assert jax.device_count() == 8, jax.devices()

        class Model(nnx.Module):
            def __init__(self):
                self.w = nnx.Param(jnp.arange(8 * 3.0).reshape(8, 3))   # sharded rows
                self.scale = nnx.Param(jnp.array([1.0, 2.0, 3.0]))      # replicated
                self.calls = nnx.BatchStat(jnp.array(0))
                self.seen = nnx.BatchStat(jnp.zeros((8, 3)))            # written per shard

        mesh = jax.make_mesh((8,), ("d",), axis_types=(jax.sharding.AxisType.Auto,))
        m = Model()
        spec = nnx.StateAxes({nnx.PathContains("w"): P("d"), nnx.PathContains("seen"): P("d"), ...: P()})
        xs = jnp.arange(8 * 3.0).reshape(8, 3)

        @nnx.shard_map(mesh=mesh, in_specs=(spec, P("d")), out_specs=(P("d"), P()))
        def f(m, x):
            assert m.w.shape == (1, 3) and x.shape == (1, 3)
            m.calls[...] = m.calls[...] + 1
            m.seen[...] = m.seen[...] + x * m.w[...]
            y = x * m.w[...] * m.scale[...]
            return y, jax.lax.psum(y.sum(), "d")

        y, total = f(m, xs)
        w = np.arange(8 * 3.0).reshape(8, 3)
        want = np.asarray(xs) * w * np.array([1.0, 2.0, 3.0])
        np.testing.assert_allclose(y, want)
        np.testing.assert_allclose(total, want.sum())
        assert int(m.calls[...]) == 1
        np.testing.assert_allclose(m.seen[...], np.asarray(xs) * w)
        assert len(m.seen[...].sharding.device_set) == 8

        g = nnx.jit(nnx.grad(lambda m, x: f(m, x)[1]))(m, xs)
        np.testing.assert_allclose(g["w"][...], np.asarray(xs) * np.array([1.0, 2.0, 3.0]))

        # tensor parallel MLP: Linear layers see their kernel shard (din, 64/8), (64/8, dout)
        class MLP(nnx.Module):
            def __init__(self, rngs):
                self.l1 = nnx.Linear(2, 64, use_bias=False, rngs=rngs)
                self.l2 = nnx.Linear(64, 3, use_bias=False, rngs=rngs)

            def __call__(self, x):
                return self.l2(jax.nn.relu(self.l1(x)))

        mlp = MLP(nnx.Rngs(0))
        x = jnp.linspace(-1.0, 1.0, 64).reshape(32, 2)
        for graph in (True, False):
            tp_spec = nnx.prefix(mlp, {nnx.PathContains("l1"): P(None, "d"), ...: P("d", None)}, graph=graph)
            tp = nnx.shard_map(lambda m, x: jax.lax.psum(m(x), "d"), mesh=mesh,
                               in_specs=(tp_spec, P()), out_specs=P())
            k1, k2 = np.asarray(mlp.l1.kernel[...]), np.asarray(mlp.l2.kernel[...])
            np.testing.assert_allclose(tp(mlp, x), np.maximum(np.asarray(x) @ k1, 0) @ k2, rtol=1e-5, atol=1e-5)
        print("OK")
        """
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "OK" in res.stdout
