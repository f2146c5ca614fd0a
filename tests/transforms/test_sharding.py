"""`nnx.jit` in/out shardings and `StateSharding`, on 1 device and on 8 CPU devices."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

import nnxfn as nnx
from tx_models import Counter


def test_state_sharding_resolves_per_leaf():
    mesh = jax.make_mesh((1,), ("x",))
    a, b = NamedSharding(mesh, P()), NamedSharding(mesh, P("x"))
    spec = nnx.StateSharding({nnx.Param: b, nnx.BatchStat: a})
    m = Counter()
    assert spec.resolve(("w",), m.w) is b
    assert spec.resolve(("count",), m.count) is a
    assert nnx.StateSharding({nnx.Param: b}).resolve(("count",), m.count) is None


def test_out_shardings_only_and_donation_together():
    mesh = jax.make_mesh((1,), ("x",))
    row = NamedSharding(mesh, P("x"))
    m = Counter()
    f = nnx.jit(lambda m, x: m(x), out_shardings=row, donate_argnums=0)
    out = f(m, jnp.ones(3))
    out = f(m, jnp.ones(3))
    assert out.sharding == row
    assert int(m.count[...]) == 2
    np.testing.assert_allclose(m.total[...], 2 * jnp.ones(3))


def test_jit_shardings_on_eight_cpu_devices_subprocess():
    script = textwrap.dedent(
        """
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import NamedSharding, PartitionSpec as P
        import nnxfn as nnx
        assert jax.device_count() == 8

        class Model(nnx.Module):
            def __init__(self):
                self.w = nnx.Param(jnp.arange(8 * 4.0).reshape(8, 4))
                self.seen = nnx.BatchStat(jnp.zeros((8, 4)))
                self.calls = nnx.BatchStat(jnp.array(0))

            def __call__(self, x):
                self.calls[...] = self.calls[...] + 1
                self.seen[...] = self.seen[...] + self.w[...] * x.mean()
                return x @ self.w[...]

        mesh = jax.make_mesh((8,), ("d",))
        rows, rep = NamedSharding(mesh, P("d")), NamedSharding(mesh, P())
        m = Model()
        spec = nnx.StateSharding({nnx.Param: rows, nnx.PathContains("seen"): rows, ...: rep})
        f = nnx.jit(lambda m, x: m(x), in_shardings=(spec, NamedSharding(mesh, P(None, "d"))),
                    out_shardings=rep)
        x = jnp.ones((2, 8))
        y = f(m, x)
        np.testing.assert_allclose(y, np.ones((2, 8)) @ np.arange(32.0).reshape(8, 4))
        assert y.sharding == rep
        assert int(m.calls[...]) == 1
        np.testing.assert_allclose(m.seen[...], np.arange(32.0).reshape(8, 4))
        assert len(m.seen[...].sharding.device_set) == 8
        y2 = f(m, x)
        assert int(m.calls[...]) == 2
        print("OK")
        """
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "OK" in res.stdout


def test_out_shardings_from_nnx_prefix_on_eight_cpu_devices_subprocess():
    script = textwrap.dedent(
        """
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import NamedSharding, PartitionSpec as P
        import nnxfn as nnx

        mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(4, 2), ("a", "b"))
        s = lambda *names: NamedSharding(mesh, P(*names))
        dummy = nnx.eval_shape(lambda: nnx.Linear(16, 32, rngs=nnx.Rngs(0)))
        for graph in (True, False):
            spec = nnx.prefix(dummy, {nnx.PathContains("kernel"): s("a", "b"), ...: s("b")}, graph=graph)

            @nnx.jit(out_shardings=spec)
            def make():
                return nnx.Linear(16, 32, rngs=nnx.Rngs(0))

            m = make()
            ref = nnx.Linear(16, 32, rngs=nnx.Rngs(0))
            assert m.kernel[...].sharding.spec == P("a", "b"), m.kernel[...].sharding
            assert m.bias[...].sharding.spec == P("b")
            np.testing.assert_allclose(m.kernel[...], ref.kernel[...])

        # the same module returned three times: one set of leaves, laid out once
        one = nnx.prefix((dummy, dummy, dummy), {...: s("a")})

        @nnx.jit(out_shardings=one)
        def three():
            m = nnx.Linear(16, 32, rngs=nnx.Rngs(0))
            return m, m, m

        m1, m2, m3 = three()
        assert m1 is m2 is m3 and m1.kernel[...].sharding.spec == P("a")
        print("OK")
        """
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "OK" in res.stdout
