"""Sharding metadata, logical rules, transform_metadata and sharded jit on one device.

The same behaviours on a simulated 8-device mesh are in `test_spmd_8dev.py`.
"""

from __future__ import annotations

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import nnxfn as nnx
from nnxfn.facade import spmd as spmd_module

ones, zeros = nnx.initializers.ones_init(), nnx.initializers.zeros_init()


def _mesh(*names: str):
    return jax.make_mesh((1,) * len(names), names, axis_types=(jax.sharding.AxisType.Auto,) * len(names))


class Block(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        init = nnx.initializers.lecun_normal()
        self.up = nnx.Linear(
            4,
            8,
            kernel_init=nnx.with_partitioning(init, (None, "model")),
            bias_init=nnx.with_partitioning(zeros, ("model",)),
            rngs=rngs,
        )
        self.down = nnx.Linear(8, 4, kernel_init=nnx.with_partitioning(init, ("model", None)), rngs=rngs)

    def __call__(self, x):
        return self.down(nnx.relu(self.up(x)))


# -- metadata --------------------------------------------------------------------------
def test_with_partitioning_and_with_metadata_annotate_the_variable():
    v = nnx.Param(nnx.with_partitioning(ones, ("a", None), tag="t")(jax.random.key(0), (2, 3)))
    assert v.out_sharding == ("a", None) and v.tag == "t"
    assert isinstance(v[...], jax.Array) and v.shape == (2, 3)
    meta = nnx.with_metadata(zeros, note=1)(jax.random.key(0), (2,))
    assert isinstance(meta, nnx.VariableMetadata) and meta.metadata == {"note": 1}
    assert nnx.BatchStat(meta, extra=2).get_metadata(exclude_required=True) == {"note": 1, "extra": 2}
    mesh = _mesh("m")
    v = nnx.Param(nnx.with_partitioning(ones, ("m",), mesh=mesh)(jax.random.key(0), (3,)))
    assert v.mesh is mesh
    assert v[...].sharding == NamedSharding(mesh, P("m"))  # mesh metadata: placed at once


def test_partition_spec_reads_aliases_and_defaults():
    a = nnx.Param(jnp.ones((2, 3)), out_sharding=("x", None))
    b = nnx.Param(jnp.ones((2, 3)), sharding_names=(None, "y"))
    c = nnx.Param(jnp.ones((2, 3)), sharding=P("z"))
    d = nnx.Param(jnp.ones((2, 3)))
    e = nnx.Variable("not an array")
    specs = nnx.get_partition_spec({"a": a, "b": b, "c": c, "d": d, "e": e, "raw": jnp.ones(2)})
    assert specs["a"][...] == P("x", None) and isinstance(specs["a"], nnx.Param)
    assert specs["b"][...] == P(None, "y") and specs["c"][...] == P("z")
    assert specs["d"][...] == P() and specs["e"][...] is None and specs["raw"] == P()


def test_get_partition_spec_of_module_and_state():
    model = Block(nnx.Rngs(0))
    specs = nnx.get_partition_spec(model)
    assert isinstance(specs, Block) and specs is not model
    assert specs.up.kernel[...] == P(None, "model") and specs.down.bias[...] == P()
    state_specs = nnx.get_partition_spec(nnx.state(model))
    assert state_specs["up"]["bias"][...] == P("model")
    mesh = _mesh("data", "model")
    named = nnx.get_named_sharding(nnx.state(model), mesh)
    assert named["down"]["kernel"][...] == NamedSharding(mesh, P("model", None))
    assert isinstance(model.up.kernel[...], jax.Array)  # the model itself is untouched


def test_logical_axis_rules_context_and_variable_rules():
    v = nnx.Param(jnp.ones((2, 4, 6)), out_sharding=("batch", "embed", ("heads", "kv")))
    assert nnx.get_partition_spec(v)[...] == P("batch", "embed", ("heads", "kv"))
    rules = [("batch", "data"), ("embed", None), ("heads", "model"), ("kv", None)]
    with nnx.logical_axis_rules(rules):
        assert nnx.get_logical_axis_rules() == tuple(rules)
        assert nnx.get_partition_spec(v)[...] == P("data", None, "model")
        w = nnx.Param(jnp.ones((2,)), out_sharding=("embed",), sharding_rules=(("embed", "x"),))
        assert nnx.get_partition_spec(w)[...] == P("x")  # the Variable's own rules win
    assert nnx.get_logical_axis_rules() == ()
    with nnx.logical_axis_rules({"batch": ("data", "fsdp")}):
        assert nnx.get_partition_spec(v)[...] == P(("data", "fsdp"), "embed", ("heads", "kv"))
    with pytest.raises(TypeError, match="logical_name, mesh_axes"):
        with nnx.logical_axis_rules(["batch"]):
            pass


def test_eager_sharding_under_a_mesh_and_without_one():
    mesh = _mesh("data", "model")
    model = Block(nnx.Rngs(0))  # no mesh: annotations only recorded
    assert model.up.kernel.out_sharding == (None, "model")
    with jax.set_mesh(mesh):
        sharded = Block(nnx.Rngs(0))
        opted_out = nnx.Param(jnp.ones((2, 2)), out_sharding=("data", None), eager_sharding=False)
    with jax.set_mesh(mesh):
        listed = nnx.Param(jnp.ones((2, 2)), out_sharding=["data", None])
    assert listed.out_sharding == ("data", None)
    assert listed[...].sharding == NamedSharding(mesh, P("data", None))
    assert sharded.up.kernel[...].sharding == NamedSharding(mesh, P(None, "model"))
    assert sharded.up.bias[...].sharding == NamedSharding(mesh, P("model"))
    assert opted_out[...].sharding.spec == P()  # not P("data", None)
    np.testing.assert_allclose(sharded.up.kernel[...], model.up.kernel[...])


def test_layers_accept_with_partitioning():
    p = nnx.with_partitioning
    init = nnx.initializers.lecun_normal()
    r = nnx.Rngs(0)
    layers = {
        "linear": (nnx.Linear(2, 4, kernel_init=p(init, (None, "m")), rngs=r), "kernel", (None, "m")),
        "embed": (nnx.Embed(5, 4, embedding_init=p(init, ("v", None)), rngs=r), "embedding", ("v", None)),
        "conv": (
            nnx.Conv(2, 4, (3,), kernel_init=p(init, (None, None, "m")), rngs=r),
            "kernel",
            (None, None, "m"),
        ),
        "layernorm": (nnx.LayerNorm(4, scale_init=p(ones, ("m",)), rngs=r), "scale", ("m",)),
        "rmsnorm": (nnx.RMSNorm(4, scale_init=p(ones, ("m",)), rngs=r), "scale", ("m",)),
        "batchnorm": (nnx.BatchNorm(4, bias_init=p(zeros, ("m",)), rngs=r), "bias", ("m",)),
        "general": (
            nnx.LinearGeneral(2, (3, 4), kernel_init=p(init, (None, "m", None)), rngs=r),
            "kernel",
            (None, "m", None),
        ),
    }
    for name, (layer, attr, spec) in layers.items():
        var = getattr(layer, attr)
        assert var.out_sharding == spec, name
        assert isinstance(var[...], jax.Array), name
    mha = nnx.MultiHeadAttention(
        2,
        8,
        kernel_init=p(init, (None, "model", None)),
        out_kernel_init=p(init, ("model", None, None)),
        rngs=r,
    )
    assert mha.query.kernel.shape == (8, 2, 4)
    assert mha.query.kernel.out_sharding == (None, "model", None)
    assert mha.out.kernel.out_sharding == ("model", None, None)
    assert mha(jnp.ones((1, 3, 8))).shape == (1, 3, 8)


# -- errors ------------------------------------------------------------------------------
def test_rank_and_mesh_errors_name_the_variable():
    mesh = _mesh("data", "model")
    model = Block(nnx.Rngs(0))
    model.up.kernel.set_metadata("out_sharding", (None, "model", None))
    with pytest.raises(ValueError, match=r"tree\.up\.kernel.*3 entries but the array has rank 2"):
        nnx.get_partition_spec(model)
    model.up.kernel.set_metadata("out_sharding", (None, "tensor"))
    with pytest.raises(ValueError, match=r"tree\.up\.kernel.*'tensor'.*mesh axes: \('data', 'model'\)"):
        nnx.get_named_sharding(model, mesh)
    with jax.set_mesh(mesh):
        with pytest.raises(ValueError, match="this Param.*2 entries but the array has rank 1"):
            nnx.Param(jnp.ones(3), out_sharding=("data", "model"))
        with pytest.raises(ValueError, match="names the axis 'x'"):
            nnx.Param(jnp.ones(3), out_sharding=("x",))
        with pytest.raises(ValueError, match="uses the mesh axis 'data' for two"):
            nnx.Param(jnp.ones((2, 2)), out_sharding=("data", "data"))


def test_transform_metadata_mismatch_is_a_clear_error():
    stack = nnx.vmap(lambda k: Block(nnx.Rngs(k)), in_axes=0, out_axes=0)(
        jax.random.split(jax.random.key(0), 2)
    )
    assert stack.up.kernel.out_sharding == (None, "model")  # no transform_metadata: unchanged
    scan = nnx.scan(
        lambda x, b: b(x),
        in_axes=(nnx.Carry, 0),
        out_axes=nnx.Carry,
        transform_metadata={nnx.PARTITION_NAME: "layers"},
    )
    with pytest.raises(ValueError, match=r"nnx\.scan: arg\.(up|down)\.kernel.*hold 'layers' at position 0"):
        scan(jnp.ones((1, 4)), stack)


# -- transforms --------------------------------------------------------------------------
def test_vmap_and_scan_keep_the_stacked_axis_in_the_spec():
    tm = {nnx.PARTITION_NAME: "layers"}
    seen = []

    @nnx.vmap(in_axes=0, out_axes=0, transform_metadata=tm)
    def create(key):
        block = Block(nnx.Rngs(key))
        seen.append(block.up.kernel.out_sharding)
        return block

    stack = create(jax.random.split(jax.random.key(0), 3))
    assert seen[-1] == (None, "model")
    assert stack.up.kernel.shape == (3, 4, 8)
    assert stack.up.kernel.out_sharding == ("layers", None, "model")
    assert stack.up.bias.out_sharding == ("layers", "model")
    assert stack.down.bias.get_metadata("out_sharding") is None  # unannotated stays so
    assert nnx.get_partition_spec(stack).up.kernel[...] == P("layers", None, "model")

    inside = []

    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry, transform_metadata=tm)
    def forward(x, block):
        inside.append(block.up.kernel.out_sharding)
        return block(x)

    y = forward(jnp.ones((2, 4)), stack)
    assert inside[-1] == (None, "model") and y.shape == (2, 4)
    assert stack.up.kernel.out_sharding == ("layers", None, "model")

    # vmap over the stack, writing state: the caller keeps the stacked spec
    @nnx.vmap(in_axes=(0, None), out_axes=0, transform_metadata=tm)
    def scale(block, factor):
        inside.append(block.down.kernel.out_sharding)
        block.down.kernel[...] = block.down.kernel[...] * factor
        block.extra = nnx.Param(jnp.zeros(2), out_sharding=("model",))  # structural change
        return block.down.kernel[...].sum()

    before = np.asarray(stack.down.kernel[...])
    scale(stack, 2.0)
    assert inside[-1] == ("model", None)
    np.testing.assert_allclose(stack.down.kernel[...], 2 * before, rtol=1e-6)
    assert stack.down.kernel.out_sharding == ("layers", "model", None)
    assert stack.extra.out_sharding == ("layers", "model") and stack.extra.shape == (3, 2)

    # an other metadata key named in transform_metadata gets the value inserted too
    @nnx.vmap(in_axes=0, out_axes=1, transform_metadata={nnx.PARTITION_NAME: "L", "tags": "t"})
    def make(key):
        return nnx.Param(jax.random.normal(key, (2,)), out_sharding=("m",), tags=("a",))

    p = make(jax.random.split(jax.random.key(1), 5))
    assert p.shape == (2, 5) and p.out_sharding == ("m", "L") and p.tags == ("a", "t")


def test_add_remove_axis_hooks_run_when_vmap_and_scan_map_a_variable():
    calls = []

    class Tracked(nnx.Param):
        def add_axis(self, axis_index, axis_name):
            calls.append(("add", axis_index, axis_name, self.out_sharding))
            super().add_axis(axis_index, axis_name)

        def remove_axis(self, axis_index, axis_name):
            calls.append(("remove", axis_index, axis_name, self.out_sharding))
            super().remove_axis(axis_index, axis_name)

    hooked = []
    tm = {nnx.PARTITION_NAME: "layers"}

    @nnx.vmap(in_axes=0, out_axes=0, transform_metadata=tm)
    def create(key):
        return nnx.Dict(
            w=Tracked(jax.random.normal(key, (2, 2)), out_sharding=("a", None)),
            b=nnx.Param(jnp.zeros(2), on_add_axis=lambda v, i, n: hooked.append((i, n))),
        )

    stack = create(jax.random.split(jax.random.key(0), 3))
    # the hook sees the annotation already extended (as Flax does)
    assert calls == [("add", 0, "layers", ("layers", "a", None))]
    assert hooked == [(0, "layers")]

    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry, transform_metadata=tm)
    def run(x, d):
        assert calls[-1][:3] == ("remove", 0, "layers")  # before the body runs
        return x @ d["w"][...]

    y = run(jnp.ones(2), stack)
    w = np.asarray(stack["w"][...])
    np.testing.assert_allclose(y, np.ones(2) @ w[0] @ w[1] @ w[2], rtol=1e-5)
    assert [c[0] for c in calls] == ["add", "remove", "add"]
    assert stack["w"].out_sharding == ("layers", "a", None)


def test_jit_constructor_out_shardings_on_one_device():
    mesh = _mesh("data", "model")
    ctor = lambda: Block(nnx.Rngs(0))  # noqa: E731
    abstract = nnx.eval_shape(ctor)
    assert isinstance(abstract.up.kernel[...], jax.ShapeDtypeStruct)
    reference = ctor()
    for spec in (
        nnx.get_named_sharding(abstract, mesh),
        nnx.get_named_sharding(nnx.state(abstract), mesh),
        nnx.StateSharding({nnx.Param: NamedSharding(mesh, P())}),
        NamedSharding(mesh, P()),
    ):
        model = nnx.jit(ctor, out_shardings=spec)()
        assert isinstance(model.up.kernel[...].sharding, NamedSharding), spec
        np.testing.assert_allclose(model.up.kernel[...], reference.up.kernel[...])
    both = nnx.jit(
        lambda: (ctor(), jnp.ones(2)),
        out_shardings=(nnx.get_named_sharding(abstract, mesh), NamedSharding(mesh, P())),
    )()
    # (on one device every layout is equivalent; test_spmd_8dev.py checks real ones)
    assert both[0].down.kernel[...].sharding.is_equivalent_to(NamedSharding(mesh, P("model")), 2)
    assert both[1].sharding.is_equivalent_to(NamedSharding(mesh, P()), 1)


def test_jit_out_shardings_errors_name_the_leaf():
    mesh = _mesh("data", "model")
    bad = nnx.StateSharding({nnx.Param: NamedSharding(mesh, P("data", "model", None))})
    with pytest.raises(ValueError, match="3 entries but the array has rank"):
        nnx.jit(lambda: Block(nnx.Rngs(0)), out_shardings=bad)()


def test_partition_spec_shardings_need_a_mesh():
    spec = nnx.StateSharding({nnx.Param: P()})
    with pytest.raises(ValueError, match=r"is a PartitionSpec, which needs a mesh.*jax\.set_mesh"):
        nnx.jit(lambda: Block(nnx.Rngs(0)), out_shardings=spec)()
    with jax.set_mesh(_mesh("data", "model")):
        model = nnx.jit(lambda: Block(nnx.Rngs(0)), out_shardings=spec)()
    assert isinstance(model.up.kernel[...], jax.Array)


def test_transform_metadata_needs_axis_names_not_named_shardings():
    mesh = _mesh("m")

    @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make(key):
        return nnx.Param(jax.random.normal(key, (2,)), out_sharding=NamedSharding(mesh, P("m")))

    with pytest.raises(ValueError, match="annotated with a NamedSharding.*out_sharding=\\(None, 'model'\\)"):
        make(jax.random.split(jax.random.key(0), 2))


def test_jit_in_shardings_accepts_a_module_of_shardings():
    mesh = _mesh("data", "model")
    model = Block(nnx.Rngs(0))
    shardings = nnx.get_named_sharding(model, mesh)

    @nnx.jit(in_shardings=(shardings, NamedSharding(mesh, P("data"))))
    def apply(model, x):
        return model(x)

    y = apply(model, jnp.ones((2, 4)))
    np.testing.assert_allclose(y, model(jnp.ones((2, 4))), rtol=1e-6)


def test_get_abstract_model_and_restore_into_it(tmp_path):
    mesh = _mesh("data", "model")
    model = Block(nnx.Rngs(3))
    nnx.save_checkpoint(tmp_path / "ckpt", model)
    graphdef, abstract = nnx.get_abstract_model(lambda: Block(nnx.Rngs(0)), mesh)
    kernel = abstract["up"]["kernel"][...]
    assert isinstance(kernel, jax.ShapeDtypeStruct)
    assert kernel.sharding == NamedSharding(mesh, P(None, "model"))
    state = nnx.restore_checkpoint(tmp_path / "ckpt", abstract)
    restored = nnx.merge(graphdef, state)
    assert restored.up.kernel[...].sharding == NamedSharding(mesh, P(None, "model"))
    np.testing.assert_array_equal(restored.up.kernel[...], model.up.kernel[...])
    assert restored.up.kernel.out_sharding == (None, "model")


def test_optimizer_moments_inherit_metadata_and_placement():
    mesh = _mesh("data", "model")
    with jax.set_mesh(mesh):
        model = Block(nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adam(1e-3))
    mu = opt.opt_state[0].mu["up"]["kernel"]
    assert mu.out_sharding == (None, "model")
    assert mu[...].sharding == model.up.kernel[...].sharding


def test_docstring_examples():
    globs = {"jax": jax, "np": np, "nnx": nnx}
    result = doctest.testmod(spmd_module, extraglobs=globs, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


# -- nnx.transform_metadata, as_abstract, use_eager_sharding (one device) --------------
@pytest.mark.parametrize("partition, start", [("din", ("din", "dout")), (None, (None, "dout"))])
def test_transform_metadata_decorator(partition, start):
    v = nnx.Param(jnp.array(0), out_sharding=start, eager_sharding=False)
    seen = []

    @nnx.transform_metadata(in_axes=0, out_axes=1, partition=partition)
    def f(v):
        v[...] += 1
        seen.append(v.out_sharding)
        return nnx.Param(jnp.array(10), out_sharding=("dmid", "dout"), eager_sharding=False)

    v2 = f(v)
    assert seen == [("dout",)]
    assert v.out_sharding == start and int(v[...]) == 1  # value written back, annotation kept
    assert v2.out_sharding == ("dmid", partition, "dout") and int(v2[...]) == 10


def test_transform_metadata_per_argument_axes_and_errors():
    a = nnx.Param(jnp.zeros(2), out_sharding=("x", "layers"), eager_sharding=False)
    b = nnx.Param(jnp.zeros(2), out_sharding=("layers", "y"), eager_sharding=False)

    @nnx.transform_metadata(in_axes=(1, None), out_axes=0, partition="layers")
    def f(a, b):
        return a.out_sharding, b.out_sharding

    assert f(a, b=b) == (("x",), ("layers", "y"))

    @nnx.transform_metadata(in_axes=0, partition="layers")
    def g(a):
        return None

    with pytest.raises(ValueError, match=r"transform_metadata: arg\b.*hold 'layers' at position 0"):
        g(a)
    with pytest.raises(TypeError, match="transform_metadata.*in_axis"):
        nnx.transform_metadata(in_axis=0, partition="layers")


def test_as_abstract_needs_a_mesh_and_leaves_others_alone():
    abstract = nnx.eval_shape(lambda: nnx.Linear(4, 8, rngs=nnx.Rngs(0)))
    same = nnx.as_abstract(abstract)
    assert isinstance(same.kernel, nnx.Param)
    assert getattr(same.kernel.get_value(), "sharding", None) is None
    annotated = nnx.eval_shape(
        lambda: nnx.Linear(4, 8, kernel_metadata={"out_sharding": (None, "model")}, rngs=nnx.Rngs(0))
    )
    with pytest.raises(ValueError, match=r"as_abstract: tree\.kernel.*jax\.set_mesh"):
        nnx.as_abstract(annotated)
    with jax.set_mesh(_mesh("data", "model")):
        done = nnx.as_abstract(annotated)
    assert done.kernel.get_value().sharding.spec == P(None, "model")
    assert annotated.kernel.get_value().sharding is None  # a copy: the input is unchanged


def test_use_eager_sharding_on_one_device():
    mesh = _mesh("data", "model")
    with pytest.raises(TypeError, match="use_eager_sharding: expected True or False"):
        nnx.use_eager_sharding("yes")
    with jax.set_mesh(mesh):
        with nnx.use_eager_sharding(False):
            lazy = nnx.Param(jnp.ones((2, 4)), out_sharding=(None, "model"))
        placed = nnx.Param(jnp.ones((2, 4)), out_sharding=(None, "model"))
    assert getattr(lazy[...].sharding, "spec", P()) == P()  # jnp.ones under the mesh: P()
    assert placed[...].sharding.spec == P(None, "model")
    assert nnx.spmd.get_var_pspec(lazy) == P(None, "model")
    assert nnx.spmd.PARTITION_NAME == nnx.PARTITION_NAME


def test_transforms_spmd_docstring_examples_run():
    from nnxfn.transforms import spmd as transforms_spmd

    result = doctest.testmod(
        transforms_spmd, extraglobs={"nnx": nnx, "jax": jax, "jnp": jnp}, optionflags=doctest.ELLIPSIS
    )
    assert result.failed == 0 and result.attempted > 0
