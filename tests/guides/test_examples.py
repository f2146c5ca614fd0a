"""Model-code patterns from Flax's worked examples (`docs_nnx/examples/`: minigpt,
vit_training, ...), run with `import nnxfn as nnx` on tiny sizes and random data.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

import nnxfn as nnx


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    maxlen: int = 8
    vocab_size: int = 32
    embed_dim: int = 16
    num_heads: int = 2
    feed_forward_dim: int = 32
    layer_sizes: list = dataclasses.field(default_factory=lambda: [1, 2])  # unhashable field
    dropout_rate: float = 0.1


class TransformerBlock(nnx.Module):
    def __init__(self, config: GPTConfig, *, rngs: nnx.Rngs):
        self.config = config
        d = config.embed_dim
        self.mha = nnx.MultiHeadAttention(num_heads=config.num_heads, in_features=d, rngs=rngs)
        self.dropout1 = nnx.Dropout(rate=config.dropout_rate, rngs=rngs)
        self.layer_norm1 = nnx.LayerNorm(epsilon=1e-6, num_features=d, rngs=rngs)
        self.mlp = nnx.Sequential(
            nnx.Linear(d, config.feed_forward_dim, rngs=rngs),
            nnx.relu,
            nnx.Linear(config.feed_forward_dim, d, rngs=rngs),
            nnx.Dropout(rate=config.dropout_rate, rngs=rngs),
        )
        self.layer_norm2 = nnx.LayerNorm(epsilon=1e-6, num_features=d, rngs=rngs)

    def __call__(self, inputs):
        attention_output = self.mha(inputs_q=inputs, is_causal=True, decode=False)
        out1 = self.layer_norm1(inputs + self.dropout1(attention_output))
        return self.layer_norm2(out1 + self.mlp(out1))


class MiniGPT(nnx.Module):
    def __init__(self, config: GPTConfig, rngs: nnx.Rngs):
        self.config = config
        self.token_emb = nnx.Embed(config.vocab_size, config.embed_dim, rngs=rngs)
        self.pos_emb = nnx.Embed(config.maxlen, config.embed_dim, rngs=rngs)
        self.blocks = nnx.Sequential(*[TransformerBlock(config, rngs=rngs) for _ in config.layer_sizes])
        self.output_layer = nnx.Linear(config.embed_dim, config.vocab_size, rngs=rngs)

    def __call__(self, tokens):
        positions = jnp.arange(tokens.shape[1])[None, :]
        x = self.token_emb(tokens) + self.pos_emb(positions)
        return self.output_layer(self.blocks(x))

    @nnx.jit(donate_argnums=(1,))
    def generate_step(self, padded_tokens, sample_index):
        logits = self(padded_tokens)
        return jnp.argmax(logits[0][sample_index])


def loss_fn(model, batch):
    logits = model(batch[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()


def test_frozen_dataclass_config_with_list_field_splits_and_merges():
    config = GPTConfig()
    model = MiniGPT(config, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    merged = nnx.merge(graphdef, state)
    assert merged.config == config and merged.blocks.layers[0].config.layer_sizes == [1, 2]
    tokens = jnp.arange(8)[None, :] % config.vocab_size
    model.set_attributes(deterministic=True)
    merged.set_attributes(deterministic=True)
    np.testing.assert_allclose(merged(tokens), model(tokens), rtol=1e-5)


def test_minigpt_trains_under_nnx_jit_and_generates():
    config = GPTConfig()
    model = MiniGPT(config, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    metrics = nnx.MultiMetric(loss=nnx.metrics.Average("loss"))

    @nnx.jit
    def train_step(model, optimizer, metrics, batch):
        loss, grads = nnx.value_and_grad(loss_fn)(model, batch)
        metrics.update(loss=loss)
        optimizer.update(model, grads)
        return loss

    batch = jax.random.randint(jax.random.key(1), (4, config.maxlen + 1), 0, config.vocab_size)
    losses = [float(train_step(model, optimizer, metrics, batch)) for _ in range(15)]
    assert losses[-1] < losses[0]
    np.testing.assert_allclose(metrics.compute()["loss"], np.mean(losses), rtol=1e-5)

    model.set_attributes(deterministic=True)
    padded = jnp.zeros((1, config.maxlen), jnp.int32)
    token = model.generate_step(padded, 0)
    assert int(token) == int(jnp.argmax(model(jnp.zeros((1, config.maxlen), jnp.int32))[0][0]))


def test_plain_jax_jit_with_graphdef_and_unhashable_config():
    config = GPTConfig()
    model = MiniGPT(config, rngs=nnx.Rngs(0))
    model.set_attributes(deterministic=True)
    graphdef, state = nnx.split(model)
    tokens = jnp.arange(8)[None, :] % config.vocab_size

    @jax.jit
    def forward(graphdef, state, tokens):
        return nnx.merge(graphdef, state)(tokens)

    np.testing.assert_allclose(forward(graphdef, state, tokens), model(tokens), rtol=1e-5, atol=1e-6)


class PatchEmbedding(nnx.Module):
    def __init__(self, img_size, patch_size, hidden, *, rngs):
        self.patches = nnx.Conv(
            3,
            hidden,
            kernel_size=(patch_size, patch_size),
            strides=(patch_size, patch_size),
            padding="VALID",
            rngs=rngs,
        )
        n = (img_size // patch_size) ** 2
        self.position_embeddings = nnx.Param(
            nnx.initializers.truncated_normal(stddev=0.02)(rngs.params(), (1, n + 1, hidden))
        )
        self.cls_token = nnx.Param(jnp.zeros((1, 1, hidden)))

    def __call__(self, x):
        x = self.patches(x)
        b, h, w, c = x.shape
        x = x.reshape(b, h * w, c)
        cls = jnp.tile(self.cls_token[...], (b, 1, 1))
        return jnp.concatenate([cls, x], axis=1) + self.position_embeddings[...]


def test_vit_style_patch_embedding_and_classifier_head():
    rngs = nnx.Rngs(0)
    embed = PatchEmbedding(8, 4, 16, rngs=rngs)
    head = nnx.Linear(16, 3, rngs=rngs)
    x = jax.random.normal(jax.random.key(2), (2, 8, 8, 3))
    tokens = embed(x)
    assert tokens.shape == (2, 5, 16)
    np.testing.assert_allclose(
        tokens[:, 0], jnp.broadcast_to(embed.position_embeddings[0, 0], (2, 16)), rtol=1e-6
    )
    logits = head(tokens[:, 0])
    assert logits.shape == (2, 3)
