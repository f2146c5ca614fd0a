"""Modules as JAX pytrees: one level per object (Flax's and Equinox's layout),
sub-Modules visible to `is_leaf`, key paths, any leaves on unflatten, and
the sharing rules (a subtree that reaches an object twice is flattened whole)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnxfn as nnx
from nnxfn.core import caches
from nnxfn.facade import jaxtree


class Block(nnx.Module):
    def __init__(self, rngs):
        self.lin = nnx.Linear(3, 3, rngs=rngs)
        self.norm = nnx.LayerNorm(3, rngs=rngs)

    def __call__(self, x):
        return self.norm(self.lin(x))


class Net(nnx.Module):
    def __init__(self, n=4, seed=0):
        rngs = nnx.Rngs(seed)
        self.blocks = nnx.List([Block(rngs) for _ in range(n)])
        self.head = nnx.Linear(3, 2, rngs=rngs)

    def __call__(self, x):
        for b in self.blocks:
            x = b(x)
        return self.head(x)


X = jnp.linspace(-1.0, 1.0, 15).reshape(5, 3)


def _eq(a, b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


# -- the layout -------------------------------------------------------------------------------
def test_key_paths_and_leaf_order_are_flax_s():
    m = Net()
    pairs = jax.tree_util.tree_flatten_with_path(m)[0]
    names = [jax.tree_util.keystr(p) for p, _ in pairs]
    assert ".blocks[3].lin.kernel.value" in names and names[-1] == ".head.kernel.value"
    assert names[:4] == [
        ".blocks[0].lin.bias.value",
        ".blocks[0].lin.kernel.value",
        ".blocks[0].norm.bias.value",
        ".blocks[0].norm.scale.value",
    ]
    # the same leaves, in the same (sorted path) order, as the graph-mode State
    state_leaves = [v[...] for _, v in nnx.state(m).flat_state()]
    for (_, a), b in zip(pairs, state_leaves, strict=True):
        _eq(a, b)


def test_sub_modules_are_pytree_nodes_seen_by_is_leaf():
    m = Net()
    found = [
        x
        for x in jax.tree.leaves(m, is_leaf=lambda x: isinstance(x, nnx.Linear))
        if isinstance(x, nnx.Linear)
    ]
    assert len(found) == 5 and found[-1] is m.head  # the live objects, as JAX hands out nodes
    children, treedef = jax.tree_util.tree_flatten(m, is_leaf=lambda x: x is not m)
    assert children == [m.blocks, m.head]


def test_eqx_tree_at_replaces_a_sub_module():
    m = Net()
    new_head = nnx.Linear(3, 2, rngs=nnx.Rngs(7))
    out = eqx.tree_at(lambda t: t.head, m, new_head)
    assert type(out) is Net and type(out.head) is nnx.Linear
    _eq(out.head.kernel[...], new_head.kernel[...])
    _eq(out.blocks[2].lin.kernel[...], m.blocks[2].lin.kernel[...])
    assert not np.allclose(m.head.kernel[...], new_head.kernel[...])  # the original is untouched
    _eq(out(X), new_head(m.blocks[3](m.blocks[2](m.blocks[1](m.blocks[0](X))))))


def test_static_attributes_travel_in_the_aux_data():
    m = Net()
    treedef = jax.tree.structure(m)
    out = jax.tree.unflatten(treedef, jax.tree.leaves(m))
    assert out.head.in_features == 3 and out.head.dot_general is m.head.dot_general
    assert out.blocks[0].norm.epsilon == m.blocks[0].norm.epsilon
    assert nnx.graphdef(out) == nnx.graphdef(m)


def test_mixed_plain_list_keeps_static_items_static():
    class Mixed(nnx.Module):
        def __init__(self):
            self.layers = [nnx.Linear(3, 3, rngs=nnx.Rngs(0)), nnx.relu, "tag", None]
            self.config = {"depth": 2, "w": nnx.Param(jnp.ones(3))}

        def __call__(self, x):
            return self.layers[1](self.layers[0](x)) * self.config["w"] * self.config["depth"]

    m = Mixed()
    pairs = jax.tree_util.tree_flatten_with_path(m)[0]
    assert [jax.tree_util.keystr(p) for p, _ in pairs] == [
        ".config['w'].value",
        ".layers[0].bias.value",
        ".layers[0].kernel.value",
    ]
    _close(jax.jit(lambda m, x: m(x))(m, X), m(X))  # no str/function leaf reaches jax.jit
    out = jax.tree.map(lambda a: a * 0, m)
    assert out.layers[1] is nnx.relu and out.layers[2] == "tag" and out.layers[3] is None
    assert type(out.layers) is list and out.config["depth"] == 2
    _eq(out.layers[0].kernel[...], jnp.zeros((3, 3)))


def test_a_static_list_edited_in_place_is_a_new_static_value():
    class Sizes(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.ones(()))
            self.sizes = [1, 2]

    m = Sizes()
    f = jax.jit(lambda m: m.w[...] * sum(m.sizes))
    assert float(f(m)) == 3.0
    m.sizes.append(3)  # no attribute set: seen by comparing the list's items
    assert float(f(m)) == 6.0
    out = jax.tree.map(lambda a: a, m)
    out.sizes.append(4)  # the rebuilt object has its own list
    assert m.sizes == [1, 2, 3]


# -- unflatten takes any leaves ------------------------------------------------------------------
def test_eqx_filter_vmap_ensemble_matches_its_members():
    class MLP(nnx.Module):
        def __init__(self, key):
            rngs = nnx.Rngs(key)
            self.l1 = nnx.Linear(3, 8, rngs=rngs)
            self.l2 = nnx.Linear(8, 1, rngs=rngs)

        def __call__(self, x):
            return self.l2(nnx.relu(self.l1(x)))

    keys = jax.random.split(jax.random.key(0), 4)
    ensemble = eqx.filter_vmap(MLP)(keys)
    assert type(ensemble) is MLP and ensemble.l1.kernel.shape == (4, 3, 8)
    ys = eqx.filter_vmap(lambda m: m(X))(ensemble)
    assert ys.shape == (4, 5, 1)
    for i in (0, 3):
        _close(ys[i], MLP(keys[i])(X))


def test_jax_eval_shape_over_a_constructor_and_a_function():
    abstract = jax.eval_shape(lambda: Net(n=2))
    assert type(abstract) is Net and type(abstract.blocks[1].lin.kernel) is nnx.Param
    leaf = abstract.blocks[1].lin.kernel[...]
    assert isinstance(leaf, jax.ShapeDtypeStruct) and leaf.shape == (3, 3) and leaf.dtype == jnp.float32
    out = jax.eval_shape(lambda m, x: m(x), Net(n=2), X)
    assert out.shape == (5, 2)
    # eqx.partition/combine: None leaves keep their slots
    params, rest = eqx.partition(Net(n=2), eqx.is_inexact_array)
    assert params.head.kernel[...] is not None
    back = eqx.combine(params, rest)
    assert type(back) is Net and back.head.kernel.shape == (3, 2)


# -- gradients and updates over the Module ---------------------------------------------------------
def _loss(m, x):
    return jnp.mean(m(x) ** 2)


def test_jax_grad_over_a_module_equals_nnx_grad_and_tree_map_updates_it():
    m = Net()
    grads = jax.grad(_loss)(m, X)
    assert type(grads) is Net and type(grads.blocks[2].norm.scale) is nnx.Param
    reference = nnx.grad(_loss)(m, X)  # graph mode: a State
    for (_, g), (_, r) in zip(nnx.state(grads).flat_state(), reference.flat_state(), strict=True):
        _eq(g[...], r[...])
    new = jax.tree.map(lambda p, g: p - 0.1 * g, m, grads)
    assert type(new) is Net
    _close(new.head.kernel[...], m.head.kernel[...] - 0.1 * grads.head.kernel[...])
    tx = optax.sgd(0.1)
    updates, _ = tx.update(grads, tx.init(m), m)
    for a, b in zip(jax.tree.leaves(optax.apply_updates(m, updates)), jax.tree.leaves(new), strict=True):
        _close(a, b)


# -- sharing ------------------------------------------------------------------------------------------
class Tied(nnx.Module):
    def __init__(self):
        self.a = nnx.Linear(3, 3, rngs=nnx.Rngs(0))
        self.b = nnx.Linear(3, 3, rngs=nnx.Rngs(1))
        self.b.kernel = self.a.kernel  # one Variable, two paths

    def __call__(self, x):
        return self.b(self.a(x))


def test_a_shared_variable_is_one_leaf_and_its_gradient_is_not_split():
    m = Tied()
    assert len(jax.tree.leaves(m)) == 3  # a.bias, a.kernel, b.bias
    grads = jax.grad(_loss)(m, X)
    assert grads.b.kernel is grads.a.kernel  # the sharing is rebuilt
    reference = nnx.grad(_loss)(m, X)
    _eq(grads.a.kernel[...], reference["a"]["kernel"][...])  # both uses summed in one leaf
    new = jax.tree.map(lambda p, g: p - 0.1 * g, m, grads)
    assert new.b.kernel is new.a.kernel
    _close(new.a.kernel[...], m.a.kernel[...] - 0.1 * reference["a"]["kernel"][...])


def test_sharing_made_by_an_in_place_list_edit_is_seen():
    class Holder(nnx.Module):
        def __init__(self):
            self.layers = [nnx.Linear(3, 3, rngs=nnx.Rngs(0))]

    m = Holder()
    assert len(jax.tree.leaves(m)) == 2
    m.layers.append(m.layers[0])  # no attribute set: the structure epoch does not move
    assert len(jax.tree.leaves(m)) == 2
    out = jax.tree.map(lambda a: a + 1, m)
    assert out.layers[1] is out.layers[0]
    _eq(out.layers[0].bias[...], jnp.ones(3))
    # the same on an object `unflatten` built (stamped without a walk)
    rebuilt = jax.tree.map(lambda a: a, Holder())
    rebuilt.layers.append(rebuilt.layers[0])
    assert len(jax.tree.leaves(rebuilt)) == 2


def test_sharing_made_by_tree_at_on_a_rebuilt_model_is_seen():
    m = jax.tree.map(lambda a: a, Net(n=2))  # built by unflatten: stamped without a walk
    shared = nnx.Linear(3, 3, rngs=nnx.Rngs(3))
    out = eqx.tree_at(lambda t: (t.blocks[0].lin, t.blocks[1].lin), m, (shared, shared))
    assert out.blocks[0].lin is out.blocks[1].lin  # a copy of `shared` (JAX rebuilds nodes), once
    _eq(out.blocks[1].lin.kernel[...], shared.kernel[...])
    n_leaves = len(jax.tree.leaves(out))
    assert n_leaves == len(jax.tree.leaves(m)) - 2  # the shared Linear's leaves once
    again = jax.tree.map(lambda a: a * 2, out)
    assert again.blocks[0].lin is again.blocks[1].lin
    _eq(again.blocks[1].lin.kernel[...], shared.kernel[...] * 2)


def test_cycle_round_trips_and_only_the_sharing_root_is_flattened_whole():
    m = Net(n=2)
    m.blocks[1].me = m.blocks[1]
    out = jax.tree.map(lambda a: a + 1, m)
    assert out.blocks[1].me is out.blocks[1]
    _eq(out.head.bias[...], m.head.bias[...] + 1)

    # the root holds the cycle in its subtree: JAX sees its State leaves, not its sub-modules
    def blocks(tree):
        return [
            x for x in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, Block)) if isinstance(x, Block)
        ]

    assert blocks(m) == []
    del m.blocks[1].me  # no sharing left: one level per object again
    assert blocks(m) == [m.blocks[0], m.blocks[1]]


# -- what each flatten costs (see jaxtree's docstring) ------------------------------------------------
@pytest.fixture
def caching_on():
    with caches.caching(True):  # these tests count the work the memos save
        yield


@pytest.mark.usefixtures("caching_on")
def test_flatten_walks_only_after_a_structural_change(monkeypatch):
    walks = []
    real = jaxtree._walk
    monkeypatch.setattr(jaxtree, "_walk", lambda obj: walks.append(type(obj).__name__) or real(obj))
    m = Net(n=3)
    f = jax.jit(lambda m, x: m(x))
    f(m, X)
    assert walks == ["Net"]  # one walk of the root stamps every object below it
    f(m, X)
    jax.tree.leaves(m)
    assert walks == ["Net"]
    new = jax.tree.map(lambda a: a * 1, m)  # unflatten stamps what it builds
    n = len(jax.tree.leaves(new))
    f(new, X)
    assert walks == ["Net"]
    m.head.extra = nnx.Param(jnp.ones(1))  # a structural change anywhere: walk again
    assert len(jax.tree.leaves(m)) == n + 1
    assert walks == ["Net", "Net"]


@pytest.mark.parametrize("leaf_placed_twice", ["variable", "module"])
def test_an_object_given_twice_as_a_leaf_is_not_trusted(leaf_placed_twice):
    m = jax.tree.map(lambda a: a, Net(n=2))
    if leaf_placed_twice == "variable":
        v = nnx.Param(jnp.zeros((3, 3)))
        out = eqx.tree_at(lambda t: (t.blocks[0].lin.kernel, t.blocks[1].lin.kernel), m, (v, v))
        assert len(jax.tree.leaves(out)) == len(jax.tree.leaves(m)) - 1
    else:
        b = Block(nnx.Rngs(5))
        out = eqx.tree_at(lambda t: (t.blocks[0], t.blocks[1]), m, (b, b))
        assert len(jax.tree.leaves(out)) == len(jax.tree.leaves(m)) - 4
