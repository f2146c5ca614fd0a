"""Flax's override points on the classes libraries subclass: Variable (`__init__`
with extra metadata, `get_value`/`set_value`, `create_value`), Module (`set_view`)
and Rngs; each checked through split/merge and `nnx.jit`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnxfn as nnx


class Scaled(nnx.Param):
    """Stores value / scale; reads value * scale (a quantization-style wrapper)."""

    def __init__(self, value, *, scale: float = 2.0, **metadata):
        super().__init__(value, scale=scale, **metadata)

    def get_value(self, **kwargs):
        return super().get_value(**kwargs) * self.scale

    def set_value(self, value, **kwargs):
        super().set_value(value / self.scale, **kwargs)


class Holder(nnx.Module):
    def __init__(self):
        self.w = Scaled(jnp.array([2.0, 4.0]), scale=4.0)

    def __call__(self, x):
        return x * self.w


def test_variable_init_and_value_overrides():
    v = Scaled(jnp.array([1.0, 2.0]), scale=4.0)
    assert v.get_metadata("scale") == 4.0 and v.scale == 4.0
    np.testing.assert_allclose(v.get_raw_value(), [1.0, 2.0])  # __init__ stores as given
    np.testing.assert_allclose(v[...], [4.0, 8.0])  # reads go through get_value
    np.testing.assert_allclose(v.value, [4.0, 8.0])
    np.testing.assert_allclose(v + 1, [5.0, 9.0])
    np.testing.assert_allclose(jnp.sum(v), 12.0)
    v[...] = jnp.array([8.0, 8.0])  # writes go through set_value
    np.testing.assert_allclose(v.get_raw_value(), [2.0, 2.0])
    v.value = jnp.array([4.0, 0.0])
    np.testing.assert_allclose(v.get_raw_value(), [1.0, 0.0])


def test_variable_overrides_survive_split_merge_and_jit():
    model = Holder()
    graphdef, state = nnx.split(model)
    assert type(state["w"]) is Scaled and state["w"].scale == 4.0
    copy = nnx.merge(graphdef, state, copy=True)
    np.testing.assert_allclose(copy.w[...], [8.0, 16.0])

    @nnx.jit
    def double(m, x):
        m.w[...] = m.w[...] * 2  # set_value inside the trace
        return m(x)

    np.testing.assert_allclose(double(model, jnp.ones(2)), [16.0, 32.0])
    np.testing.assert_allclose(model.w.get_raw_value(), [4.0, 8.0])  # committed, still scaled
    grads = nnx.grad(lambda m: m(jnp.ones(2)).sum())(model)  # a Param subclass is trained
    assert type(grads["w"]) is Scaled


class Clipped(nnx.Param):
    """Clips the value it is created with; copies and merges do not clip again."""

    created = 0

    def create_value(self, value):
        type(self).created += 1
        assert self.get_metadata("limit") == 1.0  # the metadata is set before
        return jnp.clip(value, -self.limit, self.limit)


def test_create_value_runs_once_at_construction():
    Clipped.created = 0
    v = Clipped(jnp.array([-3.0, 0.5, 3.0]), limit=1.0)
    np.testing.assert_allclose(v[...], [-1.0, 0.5, 1.0])
    assert Clipped.created == 1
    m = nnx.Dict(v=v)
    nnx.merge(*nnx.split(m), copy=True)
    v.copy()
    v[...] = jnp.array([5.0, 5.0, 5.0])  # later writes are not clipped
    np.testing.assert_allclose(v[...], [5.0, 5.0, 5.0])
    assert Clipped.created == 1


def test_module_set_view_is_what_view_calls():
    class Decoder(nnx.Module):
        def __init__(self):
            self.mode = "train"
            self.w = nnx.Param(jnp.ones(2))

        def set_view(self, decode: bool | None = None):
            if decode is not None:
                self.mode = "decode" if decode else "train"

        def __call__(self, x):
            return x * self.w if self.mode == "train" else x + self.w

    model = nnx.Sequential(Decoder())
    view = nnx.view(model, decode=True)
    assert view.layers[0].mode == "decode" and model.layers[0].mode == "train"
    assert view.layers[0].w is model.layers[0].w  # the view shares the parameters
    np.testing.assert_allclose(view(jnp.ones(2)), [2.0, 2.0])


def test_multi_head_attention_set_view_makes_the_decode_cache():
    mha = nnx.MultiHeadAttention(2, 4, qkv_features=4, decode=False, rngs=nnx.Rngs(0))
    view = nnx.view(mha, decode=True, batch_size=3, max_length=5)
    assert view.decode is True and view.cached_key.shape == (3, 5, 2, 2)
    assert int(view.cache_index[...]) == 0 and mha.cached_key is None
    with pytest.raises(TypeError, match="'batch_size' must be given to create the cache"):
        mha.set_view(decode=True)


class NamedRngs(nnx.Rngs):
    """An Rngs with a default set of streams and a helper."""

    def __init__(self, seed: int):
        super().__init__(seed, dropout=seed + 1)

    def pair(self):
        return self.params(), self.dropout()


def test_rngs_subclass_keeps_its_type_and_streams():
    rngs = NamedRngs(0)
    a, b = rngs.pair()
    assert not np.array_equal(jax.random.key_data(a), jax.random.key_data(b))
    graphdef, state = nnx.split(rngs)
    again = nnx.merge(graphdef, state, copy=True)
    assert type(again) is NamedRngs and int(again.dropout.count[...]) == 1

    @nnx.jit
    def draw(r):
        return r.pair()

    draw(rngs)
    assert type(rngs) is NamedRngs and int(rngs.params.count[...]) == 2  # committed


def test_variable_math_dunders():
    import math

    v = nnx.Variable(2.5)
    assert (math.floor(v), math.ceil(v), math.trunc(v), complex(v)) == (2, 3, 2, 2.5 + 0j)
    assert divmod(v, 2) == (1.0, 0.5) and divmod(7, nnx.Variable(2)) == (3, 1)
    assert nnx.Variable(jnp.ones((2, 3))).shape == (2, 3)
    copy = v.to_state()
    assert type(copy) is nnx.Variable and copy[...] == 2.5 and copy is not v
