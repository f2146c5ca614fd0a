"""Checks on a simulated 8-device CPU mesh, run as a script by `test_spmd_8dev.py`.

XLA_FLAGS must be set before JAX loads, and the pytest process has loaded it
already, so this runs in a subprocess and prints one JSON line:
`{"check name": "ok" | "<traceback>", ...}`.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import traceback  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P  # noqa: E402

import nnxfn as nnx  # noqa: E402
from nnxfn.facade.spmd import partition_spec  # noqa: E402

AUTO = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
EXPLICIT = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
RULES = [
    ("batch", "data"),
    ("embed", None),
    ("heads", "model"),
    ("kv", None),
    ("mlp", "model"),
    ("layers", None),
]
CHECKS: dict = {}


def check(fn):
    CHECKS[fn.__name__] = fn
    return fn


def part(init, *names):
    return nnx.with_partitioning(init, names)


class Block(nnx.Module):
    """A pre-norm transformer block annotated with logical axis names."""

    def __init__(self, d: int = 16, heads: int = 4, mlp: int = 32, *, rngs: nnx.Rngs):
        k = nnx.initializers.lecun_normal()
        self.norm1 = nnx.LayerNorm(d, scale_init=part(nnx.initializers.ones_init(), "embed"), rngs=rngs)
        self.attn = nnx.MultiHeadAttention(
            heads,
            d,
            kernel_init=part(k, "embed", "heads", "kv"),
            out_kernel_init=part(k, "heads", "kv", "embed"),
            rngs=rngs,
        )
        self.norm2 = nnx.RMSNorm(d, scale_init=part(nnx.initializers.ones_init(), "embed"), rngs=rngs)
        self.up = nnx.Linear(
            d,
            mlp,
            kernel_init=part(k, "embed", "mlp"),
            bias_init=part(nnx.initializers.zeros_init(), "mlp"),
            rngs=rngs,
        )
        self.down = nnx.Linear(mlp, d, kernel_init=part(k, "mlp", "embed"), rngs=rngs)

    def __call__(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.down(nnx.gelu(self.up(self.norm2(x))))


def spec_of(x) -> tuple:
    """A sharding's spec as a tuple without trailing Nones (P('a', None) == P('a'))."""
    spec = list(x.sharding.spec)
    while spec and spec[-1] is None:
        spec.pop()
    return tuple(spec)


def want(names) -> tuple:
    """The mesh spec an annotation asks for, under RULES."""
    with nnx.logical_axis_rules(RULES):
        spec = list(partition_spec({"out_sharding": tuple(names)}))
    while spec and spec[-1] is None:
        spec.pop()
    return tuple(spec)


def assert_laid_out_as_annotated(model, mesh) -> int:
    """Every annotated Param is a NamedSharding on `mesh` with its annotation's spec."""
    n = 0
    for path, var in nnx.state(model, nnx.Param).flat_state():
        value, names = var[...], var.get_metadata("out_sharding")
        if names is None:  # not annotated: replicated
            assert value.sharding.is_fully_replicated, (path, value.sharding)
            continue
        assert isinstance(value.sharding, NamedSharding), path
        assert value.sharding.mesh.shape == mesh.shape, path
        assert spec_of(value) == want(names), (path, spec_of(value), names)
        shard = value.addressable_shards[0].data.shape
        full = value.sharding.shard_shape(value.shape)
        assert shard == full, (path, shard, full)
        n += 1
    return n


def data(n=8, seq=4, d=16, seed=0):
    kx, ky = jax.random.split(jax.random.key(seed))
    return jax.random.normal(kx, (n, seq, d)), jax.random.normal(ky, (n, seq, d))


def train_step(model, optimizer, x, y):
    def loss_fn(model):
        return jnp.mean((model(x) - y) ** 2)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


# -- checks ---------------------------------------------------------------------------------
@check
def eager_sharding_places_parameters():
    assert jax.device_count() == 8
    for mesh in (AUTO, EXPLICIT):
        with jax.set_mesh(mesh), nnx.logical_axis_rules(RULES):
            model = Block(rngs=nnx.Rngs(0))
        assert assert_laid_out_as_annotated(model, mesh) == 9
        assert spec_of(model.up.kernel[...]) == (None, "model")
        assert spec_of(model.attn.query.kernel[...]) == (None, "model")
        assert spec_of(model.attn.out.kernel[...]) == ("model",)


@check
def jit_constructor_creates_sharded_parameters():
    ctor = lambda: Block(rngs=nnx.Rngs(0))  # noqa: E731
    with nnx.logical_axis_rules(RULES):
        abstract = nnx.eval_shape(ctor)
        assert isinstance(abstract.up.kernel[...], jax.ShapeDtypeStruct)
        shardings = nnx.get_named_sharding(abstract, AUTO)
        create = nnx.jit(ctor, out_shardings=shardings)
        model = create()
        assert_laid_out_as_annotated(model, AUTO)
        # never materialised on one device: each device holds only its shards
        compiled = create.lower().compile()
        per_device = compiled.memory_analysis().output_size_in_bytes
        total = sum(v[...].nbytes for v in jax.tree.leaves(nnx.state(model)))
        assert per_device < 0.6 * total, (per_device, total)
        replicated = nnx.jit(ctor).lower().compile().memory_analysis().output_size_in_bytes
        assert replicated >= total and per_device < replicated
    rep = NamedSharding(AUTO, P())
    by_filter = nnx.jit(ctor, out_shardings=nnx.StateSharding({nnx.Param: rep}))()
    assert by_filter.up.kernel[...].sharding.is_equivalent_to(rep, 2)
    ref = ctor()
    np.testing.assert_allclose(model.up.kernel[...], ref.up.kernel[...], rtol=1e-6)
    # explicit-axis mesh: the same, inside jax.set_mesh (as JAX requires)
    with jax.set_mesh(EXPLICIT), nnx.logical_axis_rules(RULES):
        shardings = nnx.get_named_sharding(nnx.eval_shape(ctor), EXPLICIT)
        assert_laid_out_as_annotated(nnx.jit(ctor, out_shardings=shardings)(), EXPLICIT)


def _run_steps(model, optimizer, shard_batch, steps=3):
    step = nnx.jit(train_step)
    if shard_batch:  # the state keeps the layout of its annotations through the updates
        batch = NamedSharding(AUTO, P("data"))
        with nnx.logical_axis_rules(RULES):
            state = (nnx.get_named_sharding(model, AUTO), nnx.get_named_sharding(optimizer, AUTO))
        step = nnx.jit(train_step, in_shardings=(*state, batch, batch), donate_argnums=(0, 1))
    losses = []
    for i in range(steps):
        x, y = data(seed=i)
        losses.append(float(step(model, optimizer, x, y)))
    return losses


@check
def sharded_train_step_matches_unsharded():
    ref = Block(rngs=nnx.Rngs(0))
    tx = optax.sgd(0.05, momentum=0.9)  # (adam would amplify float noise in zero gradients)
    ref_opt = nnx.Optimizer(ref, tx)
    ref_losses = _run_steps(ref, ref_opt, shard_batch=False)
    with jax.set_mesh(AUTO), nnx.logical_axis_rules(RULES):
        model = Block(rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, tx)
    losses = _run_steps(model, opt, shard_batch=True)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    for (path, a), (_, b) in zip(
        nnx.state(model, nnx.Param).flat_state(), nnx.state(ref, nnx.Param).flat_state()
    ):
        np.testing.assert_allclose(a[...], b[...], rtol=1e-4, atol=1e-6, err_msg=str(path))
    assert_laid_out_as_annotated(model, AUTO)  # still sharded after the updates
    assert int(opt.step[...]) == 3


@check
def optimizer_moments_have_parameter_shardings():
    with jax.set_mesh(AUTO), nnx.logical_axis_rules(RULES):
        model = Block(rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adam(1e-2))

    def check_moments(opt, model):
        params = dict(nnx.state(model, nnx.Param).flat_state())
        for moments in (opt.opt_state[0].mu, opt.opt_state[0].nu):
            for path, m in moments.flat_state():
                p = params[path]
                assert m.get_metadata("out_sharding") == p.get_metadata("out_sharding"), path
                assert m[...].sharding.is_equivalent_to(p[...].sharding, p.ndim), (
                    path,
                    m[...].sharding,
                    p[...].sharding,
                )

    check_moments(opt, model)
    _run_steps(model, opt, shard_batch=True, steps=1)
    check_moments(opt, model)
    # built inside a jitted constructor, laid out by the same annotations
    with nnx.logical_axis_rules(RULES):

        def ctor():
            m = Block(rngs=nnx.Rngs(0))
            return m, nnx.Optimizer(m, optax.adam(1e-2))

        abstract_model, abstract_opt = nnx.eval_shape(ctor)
        model2, opt2 = nnx.jit(
            ctor,
            out_shardings=(
                nnx.get_named_sharding(abstract_model, AUTO),
                nnx.get_named_sharding(abstract_opt, AUTO),
            ),
        )()
    check_moments(opt2, model2)
    assert spec_of(opt2.opt_state[0].mu["up"]["kernel"][...]) == (None, "model")


@check
def scan_stacked_layers_carry_the_layer_axis():
    tm = {nnx.PARTITION_NAME: "layers"}

    @nnx.vmap(in_axes=0, out_axes=0, transform_metadata=tm)
    def create(key):
        return Block(rngs=nnx.Rngs(key))

    keys = jax.random.split(jax.random.key(0), 3)
    with nnx.logical_axis_rules(RULES):
        abstract = nnx.eval_shape(create, keys)
        assert abstract.up.kernel.out_sharding == ("layers", "embed", "mlp")
        assert abstract.attn.query.kernel.out_sharding == ("layers", "embed", "heads", "kv")
        spec = nnx.get_partition_spec(abstract)
        assert spec.up.kernel[...] == P(None, None, "model")  # 'layers' -> None by the rules
        stack = nnx.jit(create, out_shardings=nnx.get_named_sharding(abstract, AUTO))(keys)
    assert stack.up.kernel.shape == (3, 16, 32)
    assert spec_of(stack.up.kernel[...]) == (None, None, "model")
    assert spec_of(stack.attn.out.kernel[...]) == (None, "model")

    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry, transform_metadata=tm)
    def forward(x, block):
        assert block.up.kernel.out_sharding == ("embed", "mlp")
        return block(x)

    x, _ = data()
    forward_jit = nnx.jit(forward)
    y_ref = forward_jit(x, nnx.jit(create)(keys))  # unsharded
    with nnx.logical_axis_rules(RULES):
        y = forward_jit(jax.device_put(x, NamedSharding(AUTO, P("data"))), stack)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-6)
    # a mesh with a real 'layers' axis shards the stack along it
    mesh = jax.make_mesh((2, 2, 2), ("layers", "data", "model"), axis_types=(AxisType.Auto,) * 3)
    keys4 = jax.random.split(jax.random.key(0), 4)
    rules = [r for r in RULES if r[0] != "layers"]
    with nnx.logical_axis_rules(rules):
        shardings = nnx.get_named_sharding(nnx.eval_shape(create, keys4), mesh)
    assert shardings.up.kernel[...].spec == P("layers", None, "model")
    assert shardings.attn.query.kernel[...].spec == P("layers", None, "model", None)


@check
def checkpoint_restores_into_a_sharded_abstract_model():
    model = Block(rngs=nnx.Rngs(1))
    with tempfile.TemporaryDirectory() as tmp:
        for backend in ("orbax", "npz"):
            path = nnx.save_checkpoint(f"{tmp}/{backend}", model, backend=backend)
            with nnx.logical_axis_rules(RULES):
                graphdef, abstract = nnx.get_abstract_model(lambda: Block(rngs=nnx.Rngs(0)), AUTO)
            sharding = abstract["up"]["kernel"][...].sharding
            assert sharding == NamedSharding(AUTO, P(None, "model")), sharding
            restored = nnx.merge(graphdef, nnx.restore_checkpoint(path, abstract))
            assert_laid_out_as_annotated(restored, AUTO)
            for (p, a), (_, b) in zip(nnx.state(restored).flat_state(), nnx.state(model).flat_state()):
                np.testing.assert_array_equal(a[...], b[...], err_msg=f"{backend} {p}")
            # a Module with sharded abstract leaves is filled in place
            target = nnx.merge(graphdef, abstract)
            assert nnx.restore_checkpoint(path, target) is target
            assert_laid_out_as_annotated(target, AUTO)
        # on an Explicit mesh, nnx.eval_shape already gives sharded (abstract-mesh) leaves
        with jax.set_mesh(EXPLICIT), nnx.logical_axis_rules(RULES):
            abstract = nnx.eval_shape(lambda: Block(rngs=nnx.Rngs(0)))
            assert abstract.up.kernel[...].sharding.spec == P(None, "model")
            restored = nnx.restore_checkpoint(path, abstract)
        assert_laid_out_as_annotated(restored, EXPLICIT)
        np.testing.assert_array_equal(restored.up.kernel[...], model.up.kernel[...])
        with nnx.logical_axis_rules(RULES):  # outside the mesh context: a clear error
            try:
                with jax.set_mesh(EXPLICIT):
                    abstract = nnx.eval_shape(lambda: Block(rngs=nnx.Rngs(0)))
                nnx.restore_checkpoint(path, abstract)
            except ValueError as e:
                assert "abstract mesh" in str(e) and "jax.set_mesh" in str(e), str(e)
            else:
                raise AssertionError("restoring onto an abstract mesh should raise")


@check
def shard_map_with_a_module_argument():
    class Dense(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.arange(8 * 4.0).reshape(8, 4) / 10, out_sharding=(None, "model"))

        def __call__(self, x):
            return x @ self.w[...]

    model = Dense()

    @nnx.shard_map(
        mesh=AUTO,
        in_specs=(nnx.StateAxes({nnx.Param: P(None, "model")}), P("data")),
        out_specs=P("data", "model"),
    )
    def apply(model, x):
        assert model.w.shape == (8, 1)  # each device sees its column block
        return model(x)

    x = jnp.arange(4 * 8.0).reshape(4, 8)
    y = apply(model, x)
    np.testing.assert_allclose(y, x @ model.w[...], rtol=1e-6)
    assert spec_of(y) == ("data", "model")

    # the module's own annotations as its specs; a write leaves with the same layout
    @nnx.shard_map(
        mesh=AUTO, in_specs=(nnx.get_partition_spec(model), P("data")), out_specs=P("data", "model")
    )
    def apply_and_scale(model, x):
        model.w[...] = model.w[...] * 2
        return model(x)

    y2 = apply_and_scale(model, x)
    np.testing.assert_allclose(y2, 2 * y, rtol=1e-6)
    assert spec_of(model.w[...]) == (None, "model")


@check
def jit_in_shardings_from_the_annotations():
    model = Block(rngs=nnx.Rngs(0))
    x, _ = data()
    ref = model(x)
    with nnx.logical_axis_rules(RULES):
        shardings = nnx.get_named_sharding(model, AUTO)
    nnx.update(model, jax.device_put(nnx.state(model), nnx.state(shardings)))
    apply = nnx.jit(
        lambda m, x: m(x),
        in_shardings=(shardings, NamedSharding(AUTO, P("data"))),
        out_shardings=NamedSharding(AUTO, P("data")),
    )
    y = apply(model, x)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)
    assert spec_of(y) == ("data",)
    assert spec_of(model.up.kernel[...]) == (None, "model")


@check
def clear_errors_for_specs_that_do_not_fit():
    def raises(fn, *needles):
        try:
            fn()
        except ValueError as e:
            for needle in needles:
                assert needle in str(e), (needle, str(e))
            return
        raise AssertionError(f"no error; wanted {needles}")

    with jax.set_mesh(AUTO):
        raises(
            lambda: nnx.Param(jnp.ones((6, 4)), out_sharding=("model", None)),
            "splits axis 0 (size 6)",
            "into 4 parts",
        )
        raises(
            lambda: nnx.Param(jnp.ones(4), out_sharding=(None, "model")), "2 entries but the array has rank 1"
        )
        raises(
            lambda: nnx.Param(jnp.ones(4), out_sharding=("tensor",)),
            "'tensor'",
            "mesh axes: ('data', 'model')",
        )
    model = Block(rngs=nnx.Rngs(0))
    raises(
        lambda: nnx.get_named_sharding(model, AUTO), "tree.attn.", "'embed'", "logical_axis_rules"
    )  # logical names need rules
    model.down.kernel.set_metadata("out_sharding", ("mlp", "embed", "extra"))
    with nnx.logical_axis_rules(RULES):
        raises(lambda: nnx.get_named_sharding(model, AUTO), "tree.down.kernel", "rank 2", "3 entries")
    bad = nnx.StateSharding({nnx.Param: NamedSharding(AUTO, P("data", "model", None, None))})
    raises(
        lambda: nnx.jit(lambda: Block(rngs=nnx.Rngs(0)), out_shardings=bad)(),
        "4 entries but the array has rank",
    )


@check
def uneven_annotation_inside_jit_is_laid_out_by_the_compiler():
    # issue 12: on Auto axes, inside a trace, a size the mesh does not divide is
    # left to the compiler (replicated, as Flax); outside a trace it is an error.
    with jax.set_mesh(AUTO):
        made = nnx.jit(lambda: nnx.Param(jnp.arange(32.0).reshape(32, 1), out_sharding=(None, "model")))()
        assert made[...].sharding.is_fully_replicated, made[...].sharding
        np.testing.assert_array_equal(made[...], np.arange(32.0).reshape(32, 1))

        class Mixed(nnx.Module):
            def __init__(self):
                self.uneven = nnx.Param(jnp.ones((32, 1)), out_sharding=(None, "model"))
                self.even = nnx.Param(jnp.ones((32, 8)), out_sharding=(None, "model"))

        m = nnx.jit(Mixed)()
        assert m.uneven[...].sharding.is_fully_replicated
        assert spec_of(m.even[...]) == (None, "model")
        assert float(m.uneven[...].sum()) == 32.0
        try:
            nnx.Param(jnp.ones((32, 1)), out_sharding=(None, "model"))
        except ValueError as e:
            assert "splits axis 1 (size 1)" in str(e) and "into 4 parts" in str(e), str(e)
        else:
            raise AssertionError("eager uneven sharding did not raise")
    with jax.set_mesh(EXPLICIT):  # Explicit axes: uneven is an error inside traces too
        try:
            nnx.jit(lambda: nnx.Param(jnp.ones((32, 1)), out_sharding=(None, "model")))()
        except ValueError as e:
            assert "does not divide" in str(e), str(e)
        else:
            raise AssertionError("uneven Explicit sharding did not raise")


@check
def use_eager_sharding_switches_placement():
    assert nnx.using_eager_sharding()
    with jax.set_mesh(AUTO):
        with nnx.use_eager_sharding(False):
            assert not nnx.using_eager_sharding()
            lazy = nnx.Param(jnp.ones((4, 8)), out_sharding=(None, "model"))
            forced = nnx.Param(jnp.ones((4, 8)), out_sharding=(None, "model"), eager_sharding=True)
        assert nnx.using_eager_sharding()
        assert not isinstance(lazy[...].sharding, NamedSharding) or spec_of(lazy[...]) == ()
        assert lazy.out_sharding == (None, "model")  # the annotation is kept
        assert spec_of(forced[...]) == (None, "model")
        eager = nnx.Param(jnp.ones((4, 8)), out_sharding=(None, "model"))
        assert spec_of(eager[...]) == (None, "model")

        @nnx.use_eager_sharding(False)
        def build():
            assert not nnx.using_eager_sharding()
            return nnx.Param(jnp.ones((4, 8)), out_sharding=(None, "model"))

        assert nnx.using_eager_sharding()
        assert spec_of(build()[...]) == ()
        nnx.use_eager_sharding(False)  # a plain call sets it for this thread
        try:
            assert not nnx.using_eager_sharding()
        finally:
            nnx.use_eager_sharding(True)


@check
def format_annotation_and_mixed_axis_types():
    from jax.experimental.layout import Format, Layout

    named = NamedSharding(AUTO, P("data", None))
    v = nnx.Variable(
        jnp.arange(16.0).reshape(4, 4), out_sharding=Format(Layout(major_to_minor=(1, 0)), named)
    )
    assert v.sharding == named
    np.testing.assert_array_equal(v[...], np.arange(16.0).reshape(4, 4))
    assert nnx.get_partition_spec(v)[...] == P("data", None)
    mixed = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto, AxisType.Explicit))
    try:
        nnx.Variable(jnp.ones((4, 4)), out_sharding=("data", "model"), mesh=mixed)
    except ValueError as e:
        assert "all Explicit or all Auto" in str(e) and "eager_sharding=False" in str(e)
    else:
        raise AssertionError("mixed axis types did not raise")
    v = nnx.Variable(jnp.ones((4, 4)), out_sharding=("data", "model"), mesh=mixed, eager_sharding=False)
    assert v.out_sharding == ("data", "model")


@check
def layers_keep_explicit_layouts():
    with jax.set_mesh(EXPLICIT):
        x = jnp.arange(8 * 4, dtype=jnp.float32).reshape(8, 4)
        sharded = jax.sharding.reshard(x, P("data", None))
        for dims in ((), (1,), (0,)):
            layer = nnx.Dropout(0.5, broadcast_dims=dims, rngs=nnx.Rngs(0))
            plain = nnx.Dropout(0.5, broadcast_dims=dims, rngs=nnx.Rngs(0))
            y = layer(sharded)
            assert "float32[8@data,4]" in str(jax.typeof(y)), (dims, jax.typeof(y))
            np.testing.assert_array_equal(y, plain(x))  # the same mask as unsharded
            assert set(np.unique(np.asarray(y) / np.maximum(x, 1) * (x > 0))) <= {0.0, 2.0}
        # grouped-query attention (2 kv heads for 4 query heads) on sharded heads
        q = jax.sharding.reshard(
            jax.random.normal(jax.random.key(0), (2, 5, 4, 8)), P("data", None, None, None)
        )
        k = jax.sharding.reshard(
            jax.random.normal(jax.random.key(1), (2, 5, 2, 8)), P("data", None, None, None)
        )
        out = nnx.dot_product_attention(q, k, k)
        ref = nnx.dot_product_attention(np.asarray(q), np.asarray(k), np.asarray(k))
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
        # MultiHeadAttention with qkv/out layouts
        mha = nnx.MultiHeadAttention(
            num_heads=8,
            in_features=16,
            qkv_features=32,
            num_kv_heads=4,
            kernel_metadata={"out_sharding": P("data", "model", None)},
            out_kernel_metadata={"out_sharding": P("model", None, "data")},
            rngs=nnx.Rngs(0),
            decode=False,
        )
        inputs = jax.random.uniform(jax.random.key(2), (4, 5, 16))
        y = mha(
            jax.sharding.reshard(inputs, P("data", None, "model")),
            out_sharding=P("data", None, "model"),
            qkv_sharding=P("data", None, "model", None),
        )
        assert "float32[4@data,5,16@model]" in str(jax.typeof(y)), jax.typeof(y)
        ref = mha(inputs, out_sharding=P(), qkv_sharding=P())
        np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-5, atol=1e-5)


@check
def as_abstract_attaches_shardings():
    with jax.set_mesh(AUTO):
        abstract = nnx.eval_shape(
            lambda: nnx.Linear(4, 8, kernel_metadata={"out_sharding": ("data", "model")}, rngs=nnx.Rngs(0))
        )
        abstract = nnx.as_abstract(abstract)
    value = abstract.kernel.get_value()
    assert isinstance(abstract.kernel, nnx.Param) and isinstance(value, jax.ShapeDtypeStruct)
    assert value.shape == (4, 8) and value.sharding.spec == P("data", "model")
    assert value.sharding.mesh.axis_names == ("data", "model")
    other = jax.make_mesh((1, 8), ("c", "d"), axis_types=(AxisType.Auto,) * 2)

    class Two(nnx.Module):
        def __init__(self):
            self.a = nnx.Linear(
                8, 8, rngs=nnx.Rngs(0), kernel_metadata={"out_sharding": ("data", "model"), "mesh": AUTO}
            )
            self.b = nnx.Linear(
                8, 8, rngs=nnx.Rngs(0), kernel_metadata={"out_sharding": ("c", "d"), "mesh": other}
            )

    two = nnx.abstract_with_sharding(nnx.eval_shape(Two))
    assert two.a.kernel.sharding.mesh == AUTO and two.a.kernel.sharding.spec == P("data", "model")
    assert two.b.kernel.sharding.mesh == other and two.b.kernel.sharding.spec == P("c", "d")
    assert nnx.spmd.as_abstract is nnx.as_abstract


def main(names: list[str]) -> None:
    results = {}
    for name in names or list(CHECKS):
        try:
            CHECKS[name]()
            results[name] = "ok"
        except Exception:  # noqa: BLE001  (reported to the test)
            results[name] = traceback.format_exc()
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1:])
