"""Property tests: random module graphs survive split/merge and State round trips."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import nnxfn as nnx


class Custom(nnx.Variable):
    pass


class NodeA(nnx.Module):
    pass


class NodeB(nnx.Module):
    pass


VAR_TYPES = [nnx.Param, nnx.BatchStat, nnx.Cache, Custom]
SHAPES = [(), (2,), (2, 3)]
DTYPES = [jnp.float32, jnp.int32]
METADATA = [{}, {"tag": "tagA"}, {"sharding": ("data", None)}, {"note": 3, "tag": "tagB"}]
NAMES = ["a0", "a1", "b", "c", "w"]
FILTERS = [nnx.Param, nnx.BatchStat, "tagA", nnx.PathContains("a1"), Custom, nnx.Not(nnx.Variable)]

SETTINGS = settings(max_examples=30, deadline=None)


# -- recipes: plain data describing a graph ---------------------------------------
def leaf_spec(n_modules):
    return st.one_of(
        st.tuples(
            st.just("var"),
            st.integers(0, len(VAR_TYPES) - 1),
            st.integers(0, len(SHAPES) - 1),
            st.integers(0, len(DTYPES) - 1),
            st.integers(0, len(METADATA) - 1),
        ),
        st.tuples(st.just("array"), st.integers(0, len(SHAPES) - 1)),
        st.tuples(
            st.just("static"),
            st.one_of(st.integers(-3, 3), st.text("xyz", max_size=3), st.booleans(), st.none()),
        ),
        st.tuples(st.just("mod"), st.integers(0, n_modules - 1)),
        st.tuples(st.just("sharedvar"), st.integers(0, 5)),
    )


@st.composite
def graph_recipes(draw):
    n_modules = draw(st.integers(1, 4))
    leaf = leaf_spec(n_modules)
    spec = st.one_of(
        leaf,
        st.tuples(st.just("list"), st.lists(leaf, max_size=3)),
        st.tuples(st.just("tuple"), st.lists(leaf, max_size=3)),
        st.tuples(
            st.just("dict"),
            st.dictionaries(st.one_of(st.sampled_from(["k", "j"]), st.integers(0, 2)), leaf, max_size=3),
        ),
    )
    modules = []
    for _ in range(n_modules):
        names = draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=4))
        kind = draw(st.booleans())
        modules.append((kind, [(name, draw(spec)) for name in names]))
    return modules


def build(recipe):
    nodes = [(NodeA if kind else NodeB)() for kind, _ in recipe]
    variables = []
    counter = [0]

    def make(spec):
        tag = spec[0]
        counter[0] += 1
        if tag == "var":
            _, vt, si, di, mi = spec
            shape = SHAPES[si]
            value = (jnp.arange(int(np.prod(shape))) + counter[0]).reshape(shape).astype(DTYPES[di])
            var = VAR_TYPES[vt](value, **METADATA[mi])
            variables.append(var)
            return var
        if tag == "array":
            shape = SHAPES[spec[1]]
            return jnp.full(shape, float(counter[0]))
        if tag == "static":
            return spec[1]
        if tag == "mod":
            return nodes[spec[1]]
        if tag == "sharedvar":
            if not variables:
                return make(("var", 0, 1, 0, 1))
            return variables[spec[1] % len(variables)]
        if tag == "list":
            return [make(s) for s in spec[1]]
        if tag == "tuple":
            return tuple(make(s) for s in spec[1])
        if tag == "dict":
            return {k: make(s) for k, s in spec[1].items()}
        raise AssertionError(spec)

    for node, (_, attrs) in zip(nodes, recipe):
        for name, spec in attrs:
            setattr(node, name, make(spec))
    return nodes[0]


# -- structural comparison -------------------------------------------------------------
def assert_same_graph(orig, new):
    """Same types, values, metadata; identity pattern (sharing, cycles) isomorphic."""
    fwd: dict[int, object] = {}
    back: dict[int, object] = {}

    def visit(a, b, path):
        if isinstance(a, (nnx.Variable, nnx.Module)):
            if id(a) in fwd:
                assert fwd[id(a)] is b, f"sharing lost at {path}"
                return
            assert id(b) not in back, f"spurious sharing at {path}"
            fwd[id(a)], back[id(b)] = b, a
            assert type(a) is type(b), path
        if isinstance(a, nnx.Variable):
            assert a.metadata_items() == b.metadata_items(), path
            visit(a.raw_value, b.raw_value, path + ("value",))
        elif isinstance(a, nnx.Module):
            ka = {k for k in vars(a) if not k.startswith("_nnx")}
            kb = {k for k in vars(b) if not k.startswith("_nnx")}
            assert ka == kb, path
            for k in sorted(ka):
                visit(vars(a)[k], vars(b)[k], path + (k,))
        elif isinstance(a, (list, tuple)):
            assert type(a) is type(b) and len(a) == len(b), path
            for i, (x, y) in enumerate(zip(a, b)):
                visit(x, y, path + (i,))
        elif isinstance(a, dict):
            assert type(b) is dict and set(a) == set(b), path
            for k in a:
                visit(a[k], b[k], path + (k,))
        elif isinstance(a, jax.Array):
            assert isinstance(b, jax.Array), path
            assert a.dtype == b.dtype and a.shape == b.shape, path
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        else:
            assert type(a) is type(b) and a == b, path

    visit(orig, new, ())


def state_arrays_equal(s1, s2):
    f1, f2 = s1.flat_state(), s2.flat_state()
    assert [p for p, _ in f1] == [p for p, _ in f2]
    for (_, a), (_, b) in zip(f1, f2):
        assert type(a) is type(b)
        if isinstance(a, nnx.Variable):
            assert a.metadata_items() == b.metadata_items()
            a, b = a.raw_value, b.raw_value
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# -- properties --------------------------------------------------------------------------
@SETTINGS
@given(graph_recipes())
def test_split_merge_reproduces_graph(recipe):
    model = build(recipe)
    graphdef, state = nnx.split(model)
    assert_same_graph(model, nnx.merge(graphdef, state))
    assert_same_graph(model, nnx.clone(model))
    # a second split of the merged graph gives an equal GraphDef and State
    graphdef2, state2 = nnx.split(nnx.merge(graphdef, state))
    assert graphdef2 == graphdef and hash(graphdef2) == hash(graphdef)
    state_arrays_equal(state, state2)


@SETTINGS
@given(graph_recipes(), st.lists(st.sampled_from(FILTERS), unique_by=id, max_size=4), st.randoms())
def test_split_with_filters_then_merge(recipe, filters, rnd):
    model = build(recipe)
    graphdef, *states = nnx.split(model, *filters, ...)
    assert len(states) == len(filters) + 1
    total = sum(len(s.flat_state()) for s in states)
    assert total == graphdef.num_leaves
    rnd.shuffle(states)
    assert_same_graph(model, nnx.merge(graphdef, *states))


@SETTINGS
@given(graph_recipes())
def test_rebuilt_separately_gives_equal_graphdef(recipe):
    a, b = build(recipe), build(recipe)
    assert nnx.graphdef(a) == nnx.graphdef(b)


@SETTINGS
@given(graph_recipes())
def test_state_survives_tree_map_jit_and_pure_dict(recipe):
    model = build(recipe)
    graphdef, state = nnx.split(model)

    mapped = jax.tree.map(lambda x: x, state)
    state_arrays_equal(state, mapped)
    assert_same_graph(model, nnx.merge(graphdef, mapped))

    jitted = jax.jit(lambda s: s)(state)
    state_arrays_equal(state, jitted)
    assert_same_graph(model, nnx.merge(graphdef, jitted))

    replaced = state.replace_by_pure_dict(state.to_pure_dict())
    state_arrays_equal(state, replaced)
    assert_same_graph(model, nnx.merge(graphdef, replaced))


def mixes_key_types(x) -> bool:
    """Whether a recipe holds a dict whose keys are of more than one type."""
    if isinstance(x, dict):
        return len({type(k) for k in x}) > 1 or any(mixes_key_types(v) for v in x.values())
    if isinstance(x, (list, tuple)):
        return any(mixes_key_types(v) for v in x)
    return False


@SETTINGS
@given(graph_recipes())
def test_module_pytree_roundtrip_keeps_sharing(recipe):
    # JAX sorts a dict's keys to flatten it: a dict mixing str and int keys is
    # no JAX pytree (for Flax and Equinox alike); the graph API takes it.
    assume(not mixes_key_types(recipe))
    model = build(recipe)
    same = jax.tree.map(lambda x: x, model)
    assert_same_graph(model, same)
    leaves = jax.tree.leaves(model)
    assert len(leaves) == nnx.graphdef(model).num_leaves


@SETTINGS
@given(graph_recipes())
def test_update_restores_values(recipe):
    model = build(recipe)
    graphdef, state = nnx.split(model)
    target = nnx.merge(graphdef, jax.tree.map(jnp.zeros_like, state))
    nnx.update(target, state)
    assert_same_graph(model, target)
