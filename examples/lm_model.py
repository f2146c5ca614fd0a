"""A character-level GPT written against the NNX API (used by `train_lm.py` and `benchmarks/lm.py`).

The only nnxfn-specific line is the import below: `benchmarks/lm.py` loads this
same file with it replaced by `from flax import nnx` to time Flax NNX on
identical model code.

- `GPT`: token + position embeddings, `depth` pre-norm blocks (causal
  `nnx.MultiHeadAttention`, an MLP, dropout), a final `nnx.LayerNorm` and a
  linear head. The blocks are created with `nnx.vmap` over a split `Rngs`
  (one stacked `Block` whose arrays have a leading layer axis) and applied
  with `nnx.scan` over that axis, each under `nnx.remat`.
- Every parameter is annotated with logical axis names
  (`nnx.with_partitioning`); `RULES` maps them to a `('data', 'model')` mesh:
  FSDP over `data` (the embedding dimension of every weight, and the batch),
  tensor parallelism over `model` (heads, MLP units, vocabulary).
- Decoding: `model.init_cache(batch, max_length)` makes the key/value caches
  (stacked over layers) and a position counter; `model(tokens, decode=True)`
  then takes one token per row and returns its logits.
"""

from __future__ import annotations

import dataclasses
import typing as tp

import jax
import jax.numpy as jnp
import optax

import nnxfn as nnx

# logical axis name -> mesh axis; None: replicated
RULES = (
    ("batch", "data"),
    ("embed", "data"),  # FSDP: every weight's model dimension is split over `data`
    ("heads", "model"),
    ("mlp", "model"),
    ("vocab", "model"),
    ("head_dim", None),
    ("positions", None),
    ("layers", None),
)


@dataclasses.dataclass(frozen=True)
class Config:
    vocab: int = 128  # the corpus's 103 characters, padded to a multiple of 8 for sharding
    length: int = 128  # context length (positions)
    dim: int = 128  # (the defaults are train_lm.py's)
    heads: int = 4
    depth: int = 4
    mlp: int = 512
    dropout: float = 0.1


def _part(init: tp.Any, *names: str | None) -> tp.Any:
    return nnx.with_partitioning(init, names)


class Block(nnx.Module):
    """Pre-norm causal self-attention + MLP, each followed by dropout on its residual branch."""

    def __init__(self, cfg: Config, *, rngs: nnx.Rngs):
        kernel = nnx.initializers.normal(0.02)
        zeros, ones = nnx.initializers.zeros_init(), nnx.initializers.ones_init()
        self.norm1 = nnx.LayerNorm(
            cfg.dim, scale_init=_part(ones, "embed"), bias_init=_part(zeros, "embed"), rngs=rngs
        )
        self.attn = nnx.MultiHeadAttention(
            cfg.heads,
            cfg.dim,
            kernel_init=_part(kernel, "embed", "heads", "head_dim"),
            out_kernel_init=_part(
                nnx.initializers.normal(0.02 / (2 * cfg.depth) ** 0.5), "heads", "head_dim", "embed"
            ),
            bias_init=_part(zeros, "heads", "head_dim"),
            out_bias_init=_part(zeros, "embed"),
            decode=False,
            rngs=rngs,
        )
        self.norm2 = nnx.LayerNorm(
            cfg.dim, scale_init=_part(ones, "embed"), bias_init=_part(zeros, "embed"), rngs=rngs
        )
        self.up = nnx.Linear(
            cfg.dim,
            cfg.mlp,
            kernel_init=_part(kernel, "embed", "mlp"),
            bias_init=_part(zeros, "mlp"),
            rngs=rngs,
        )
        self.down = nnx.Linear(
            cfg.mlp,
            cfg.dim,
            kernel_init=_part(nnx.initializers.normal(0.02 / (2 * cfg.depth) ** 0.5), "mlp", "embed"),
            bias_init=_part(zeros, "embed"),
            rngs=rngs,
        )
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array | None, decode: bool) -> jax.Array:
        x = x + self.dropout(self.attn(self.norm1(x), mask=mask, decode=decode))
        return x + self.dropout(self.down(nnx.gelu(self.up(self.norm2(x)))))


class GPT(nnx.Module):
    def __init__(self, cfg: Config, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = nnx.Embed(
            cfg.vocab,
            cfg.dim,
            embedding_init=_part(nnx.initializers.normal(0.02), "vocab", "embed"),
            rngs=rngs,
        )
        self.positions = nnx.Embed(
            cfg.length,
            cfg.dim,
            embedding_init=_part(nnx.initializers.normal(0.02), "positions", "embed"),
            rngs=rngs,
        )

        @nnx.split_rngs(splits=cfg.depth)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_blocks(rngs: nnx.Rngs) -> Block:
            return Block(cfg, rngs=rngs)

        self.blocks = make_blocks(rngs)
        self.norm = nnx.LayerNorm(
            cfg.dim,
            scale_init=_part(nnx.initializers.ones_init(), "embed"),
            bias_init=_part(nnx.initializers.zeros_init(), "embed"),
            rngs=rngs,
        )
        self.head = nnx.Linear(
            cfg.dim,
            cfg.vocab,
            kernel_init=_part(nnx.initializers.normal(0.02), "embed", "vocab"),
            bias_init=_part(nnx.initializers.zeros_init(), "vocab"),
            rngs=rngs,
        )
        self.position: nnx.Cache | None = nnx.data(None)  # next position, made by init_cache

    def __call__(self, tokens: jax.Array, *, decode: bool = False) -> jax.Array:
        """Logits `(batch, time, vocab)` for `tokens` `(batch, time)`; with `decode=True`
        `time` must be 1 and the token goes at the cache's next position."""
        if decode:
            if self.position is None:
                raise ValueError(
                    "GPT: decode=True needs a cache: call `model.init_cache(batch, max_length)`."
                )
            start = self.position[...]
            pos = start + jnp.arange(tokens.shape[1])
            self.position[...] = start + tokens.shape[1]
            mask = None  # the attention cache masks the positions not written yet
        else:
            pos = jnp.arange(tokens.shape[1])
            mask = nnx.make_causal_mask(tokens)
        x = self.embed(tokens) + self.positions(pos)

        @nnx.scan(
            in_axes=(nnx.Carry, 0), out_axes=nnx.Carry, transform_metadata={nnx.PARTITION_NAME: "layers"}
        )
        @nnx.remat
        def run_blocks(x: jax.Array, block: Block) -> jax.Array:
            return block(x, mask, decode)

        x = run_blocks(x, self.blocks)
        return self.head(self.norm(x))

    def init_cache(self, batch: int, max_length: int | None = None) -> None:
        """Zeroed key/value caches for `batch` rows of up to `max_length` tokens, position 0."""
        length = self.cfg.length if max_length is None else max_length
        if length > self.cfg.length:
            raise ValueError(f"GPT.init_cache: max_length {length} exceeds the {self.cfg.length} positions")

        @nnx.vmap(in_axes=0, out_axes=0)
        def init(block: Block) -> None:
            block.attn.init_cache((batch, length, self.cfg.dim))

        init(self.blocks)
        self.position = nnx.Cache(jnp.zeros((), jnp.int32))


def loss_fn(model: GPT, tokens: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean next-character cross-entropy in nats."""
    logits = model(tokens)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def train_step(model: GPT, optimizer: nnx.Optimizer, tokens: jax.Array, targets: jax.Array) -> jax.Array:
    loss, grads = nnx.value_and_grad(loss_fn)(model, tokens, targets)
    optimizer.update(model, grads)
    return loss


def eval_step(model: GPT, tokens: jax.Array, targets: jax.Array, weights: jax.Array) -> jax.Array:
    """Cross-entropy (nats) summed over the batch with `weights` (0 for padding); the
    caller divides by the weights' sum."""
    logits = model(tokens)
    return (optax.softmax_cross_entropy_with_integer_labels(logits, targets) * weights).sum()


def decode_step(
    model: GPT, tokens: jax.Array, key: jax.Array, temperature: jax.Array, top_k: int, vocab: int
) -> jax.Array:
    """Feed `tokens` `(batch, 1)` through the cache; sample the next token of each row.

    Logits beyond `vocab` (the padding) are never sampled; only the `top_k`
    most likely characters are (all of them if `top_k` is 0).
    """
    logits = model(tokens, decode=True)[:, -1, :vocab] / temperature
    if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(key, logits)[:, None].astype(tokens.dtype)


def optimizer_tx(learning_rate: float, warmup: int, total: int, weight_decay: float = 0.1) -> tp.Any:
    """AdamW on a linear-warmup + cosine schedule, after clipping the global gradient norm to 1."""
    schedule = optax.warmup_cosine_decay_schedule(
        0.0,
        learning_rate,
        warmup_steps=warmup,
        decay_steps=max(total, warmup + 1),
        end_value=learning_rate / 10,
    )
    return optax.chain(
        optax.clip_by_global_norm(1.0), optax.adamw(schedule, b2=0.99, weight_decay=weight_decay)
    )
