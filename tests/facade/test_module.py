"""Module: attributes, static/data, reference semantics, pytrees, copies, modes, repr."""

import copy
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxfn as nnx
from nnxfn.facade import context


class Linear(nnx.Module):
    def __init__(self, din, dout, seed=0):
        self.kernel = nnx.Param(jax.random.normal(jax.random.key(seed), (din, dout)))
        self.bias = nnx.Param(jnp.zeros(dout))
        self.in_features, self.out_features = din, dout

    def __call__(self, x):
        return x @ self.kernel + self.bias


class Dropout(nnx.Module):
    def __init__(self, rate, deterministic=False):
        self.rate, self.deterministic = rate, deterministic


class Norm(nnx.Module):
    def __init__(self, n):
        self.mean = nnx.BatchStat(jnp.zeros(n))
        self.use_running_average = False


class Model(nnx.Module):
    def __init__(self):
        self.enc = Linear(2, 4, seed=1)
        self.norm = Norm(4)
        self.drop = Dropout(0.1)
        self.dec = Linear(4, 2, seed=2)

    def __call__(self, x):
        return self.dec(self.enc(x) - self.norm.mean)


class Deep(nnx.Module):
    def __init__(self, n):
        self.layers = [Linear(2, 2, seed=i) for i in range(n)]


def _eq(a, b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_attribute_assignment_and_graph_membership():
    m = Model()
    m.extra = nnx.Param(jnp.ones(1))
    m.note = "hello"
    state = nnx.state(m)
    assert "extra" in state and "note" not in state
    assert nnx.graphdef(m) != nnx.graphdef(Model())
    del m.extra
    assert "extra" not in nnx.state(m)


def test_structural_changes_bump_epoch_value_writes_do_not():
    m = Model()
    e0 = context.structure_epoch()
    m.enc.kernel[...] = jnp.zeros((2, 4))
    assert context.structure_epoch() == e0
    m.raw = jnp.ones(2)
    e1 = context.structure_epoch()
    assert e1 > e0
    m.raw = "now static"
    e2 = context.structure_epoch()
    assert e2 > e1
    del m.raw
    assert context.structure_epoch() > e2


def test_static_marks_attribute_static():
    m = nnx.Module()
    m.shape = nnx.static((2, 3))
    m.w = nnx.Param(jnp.ones(2))
    assert m.shape == (2, 3)  # the marker is unwrapped
    g, state = nnx.split(m)
    assert list(state) == ["w"]
    new = nnx.merge(g, state)
    assert new.shape == (2, 3)
    assert nnx.graphdef(new) == g
    m2 = nnx.Module()
    m2.shape = nnx.static((2, 4))
    m2.w = nnx.Param(jnp.ones(2))
    assert nnx.graphdef(m2) != g


def test_static_accepts_unhashable_values_like_flax():
    m = nnx.Module()
    m.cfg = nnx.static([1, 2])  # Flax accepts it at assignment
    assert m.cfg == [1, 2] and "cfg" not in nnx.state(m)


def test_static_rejects_data_like_flax():
    m = nnx.Module()
    with pytest.raises(ValueError, match=r"Found data in value of type .*'x' of Pytree type 'Module'"):
        m.x = nnx.static(jnp.ones(2))
    assert not hasattr(m, "x")  # nothing half-applied


def test_static_attribute_rebound_to_array_errors_at_assignment():
    m = nnx.Module()
    m.x = nnx.static(3)
    m.x = 4  # still static, still hashable: fine
    assert nnx.graphdef(m).root.static == (("x", 4),)
    with pytest.raises(ValueError, match=r"Found data on value of type .*'x'.*nnx\.data"):
        m.x = jnp.ones(2)
    m.x = nnx.data(jnp.ones(2))  # the fix the message suggests
    assert list(nnx.state(m)) == ["x"]


def test_deleting_static_attribute():
    m = nnx.Module()
    m.x = nnx.static(3)
    m.w = nnx.Param(jnp.ones(1))
    del m.x
    g, state = nnx.split(m)
    new = nnx.merge(g, state)
    assert not hasattr(new, "x")
    m.x = jnp.ones(2)  # a plain assignment after the delete is data again
    assert "x" in nnx.state(m)


def test_data_undoes_static():
    m = nnx.Module()
    m.arr = nnx.static(3)
    m.arr = nnx.data(jnp.arange(3.0))
    assert "arr" in nnx.state(m)
    _eq(m.arr, jnp.arange(3.0))


def test_reference_semantics():
    shared = Linear(2, 2)
    a, b = nnx.Module(), nnx.Module()
    a.layer = shared
    b.layer = shared
    a.layer.kernel[...] = jnp.zeros((2, 2))
    _eq(b.layer.kernel[...], jnp.zeros((2, 2)))
    shared.bias = nnx.Param(jnp.ones(2))
    assert b.layer.bias is a.layer.bias


def test_modules_are_pytrees_and_tree_map_keeps_sharing():
    m = Model()
    m.twin = m.enc
    m.tied = m.dec.bias
    leaves = jax.tree.leaves(m)
    assert len(leaves) == 5  # enc.kernel/bias, norm.mean, dec.kernel/bias, each once
    out = jax.tree.map(lambda x: x * 0, m)
    assert type(out) is Model and out is not m
    assert out.twin is out.enc and out.tied is out.dec.bias
    _eq(out.enc.kernel[...], jnp.zeros((2, 4)))
    assert float(jnp.abs(m.enc.kernel[...]).sum()) > 0  # original untouched
    assert out.drop.rate == 0.1


def test_module_through_jax_jit_and_grad():
    m = Model()
    x = jnp.ones((3, 2))

    @jax.jit
    def f(model, x):
        return model(x).sum()

    assert np.isclose(float(f(m, x)), float(m(x).sum()))
    grads = jax.grad(lambda model: model(x).sum())(m)
    assert type(grads) is Model and type(grads.enc.kernel) is nnx.Param
    assert grads.enc.kernel.shape == (2, 4)


def test_module_with_cycle_is_a_pytree():
    m = Model()
    m.me = m
    out = jax.tree.map(lambda x: x + 1, m)
    assert out.me is out
    _eq(out.norm.mean[...], jnp.ones(4))


def test_pickle_keeps_sharing_and_cycles():
    m = Model()
    m.twin = m.enc
    m.me = m
    back = pickle.loads(pickle.dumps(m))
    assert back.twin is back.enc and back.me is back
    _eq(back.enc.kernel[...], m.enc.kernel[...])
    back.enc.kernel[...] = jnp.zeros((2, 4))
    assert float(jnp.abs(m.enc.kernel[...]).sum()) > 0
    g1, g2 = nnx.graphdef(m), nnx.graphdef(back)
    assert g1 == g2


def test_deepcopy_and_clone_keep_sharing():
    m = Model()
    m.twin = m.enc
    m.tied = m.dec.kernel
    for c in (copy.deepcopy(m), nnx.clone(m)):
        assert c.twin is c.enc and c.tied is c.dec.kernel
        assert c.enc is not m.enc
        _eq(c(jnp.ones((1, 2))), m(jnp.ones((1, 2))))


def test_static_survives_pickle_and_deepcopy():
    m = nnx.Module()
    m.shape = nnx.static((1, 2))
    for c in (pickle.loads(pickle.dumps(m)), copy.deepcopy(m)):
        assert c.shape == (1, 2)
        assert nnx.graphdef(c) == nnx.graphdef(m)


def test_set_attributes():
    m = Model()
    m.set_attributes(deterministic=True)
    assert m.drop.deterministic is True
    m.set_attributes(Norm, use_running_average=True)
    assert m.norm.use_running_average is True
    m.set_attributes(Dropout, rate=0.5)
    assert m.drop.rate == 0.5
    with pytest.raises(
        ValueError, match=r"Could not find at least one instance of the following attributes: \['nope'\]"
    ):
        m.set_attributes(nope=1)
    m.set_attributes(nope=1, raise_if_not_found=False)
    assert not hasattr(m.drop, "nope")


def test_train_and_eval():
    m = Model()
    m.eval()
    assert m.drop.deterministic is True and m.norm.use_running_average is True
    m.train()
    assert m.drop.deterministic is False and m.norm.use_running_average is False
    m.eval(rate=0.0)
    assert m.drop.rate == 0.0


def test_view_shares_variables_original_unchanged():
    m = Model()
    m.twin = m.enc
    v = nnx.view(m, deterministic=True, use_running_average=True)
    assert v is not m and v.drop is not m.drop
    assert v.drop.deterministic is True and m.drop.deterministic is False
    assert v.norm.use_running_average is True and m.norm.use_running_average is False
    assert v.enc.kernel is m.enc.kernel and v.norm.mean is m.norm.mean
    assert v.twin is v.enc
    v.norm.mean[...] = jnp.ones(4)  # writes through the view
    _eq(m.norm.mean[...], jnp.ones(4))


def test_sow():
    class Block(nnx.Module):
        def __call__(self, x):
            self.sow(nnx.Intermediate, "hidden", x * 2)
            return x

    b = Block()
    b(1.0)
    b(2.0)
    assert type(b.hidden) is nnx.Intermediate
    assert b.hidden[...] == (2.0, 4.0)
    assert list(nnx.state(b, nnx.Intermediate)) == ["hidden"]

    class Summed(nnx.Module):
        def __call__(self, x):
            self.sow(nnx.Intermediate, "total", x, reduce_fn=lambda a, b: a + b, init_fn=lambda: 0)

    s = Summed()
    s(3)
    s(4)
    assert s.total[...] == 7
    popped = nnx.pop(b, nnx.Intermediate)
    assert not hasattr(b, "hidden") and popped["hidden"][...] == (2.0, 4.0)


def test_perturb():
    class Block(nnx.Module):
        def __init__(self):
            self.lin = Linear(2, 2)

        def __call__(self, x):
            h = self.lin(x)
            h = self.perturb("h", h)
            return (h**2).sum()

    b = Block()
    x = jnp.ones((1, 2))
    first = b(x)
    assert type(b.h) is nnx.Perturbation and b.h.shape == (1, 2)
    _eq(b.h[...], jnp.zeros((1, 2)))
    # the gradient w.r.t. the perturbation is dL/dh
    graphdef, perturbations, rest = nnx.split(b, nnx.Perturbation, ...)

    def loss(p):
        return nnx.merge(graphdef, p, rest)(x)

    grads = jax.grad(loss)(perturbations)
    h = b.lin(x)
    _eq(grads["h"][...], 2 * h)
    b.h[...] = jnp.ones((1, 2))
    assert np.isclose(float(b(x)), float(((h + 1) ** 2).sum()))
    assert np.isclose(float(first), float((h**2).sum()))


def test_repr_nested_with_shapes_and_dtypes():
    m = Model()
    text = repr(m)
    assert text.startswith("Model(")
    assert "enc=Linear(" in text
    assert "kernel=Param(" in text and "value=Array(shape=(2, 4), dtype=float32)" in text
    assert "rate=0.1" in text
    assert "mean=BatchStat(" in text


def test_repr_bounded_for_deep_and_wide_models():
    wide = Deep(200)
    text = repr(wide)
    assert len(text) < 20_000
    assert text.count("Linear(") < 50
    chain = nnx.Module()
    node = chain
    for _ in range(200):
        node.child = nnx.Module()
        node.child.w = nnx.Param(jnp.ones(1))
        node = node.child
    assert len(repr(chain)) < 5_000


def test_repr_shows_shared_objects_once():
    m = Model()
    m.twin = m.enc
    m.tied = m.norm.mean
    m.me = m
    text = repr(m)
    assert text.count("Linear(\n") == 2  # enc and dec; twin shown as a back-reference
    assert "twin=Linear(<shared, shown above>)" in text
    assert "me=Model(<shared, shown above>)" in text
    assert text.count("BatchStat(\n") == 1
    assert "tied=BatchStat(<shared, shown above>)" in text


def test_repr_lists_of_modules():
    m = Deep(2)
    text = repr(m)
    assert "layers=[" in text and text.count("Linear(") == 2


def test_merge_does_not_call_init_and_module_without_init():
    class Strict(nnx.Module):
        def __init__(self, required):
            self.w = nnx.Param(jnp.full(2, required))

    s = Strict(3.0)
    c = nnx.clone(s)
    _eq(c.w[...], jnp.full(2, 3.0))
    empty = nnx.Module()
    assert list(nnx.state(empty).flat_state()) == []
    assert type(nnx.clone(empty)) is nnx.Module
