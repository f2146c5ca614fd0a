"""The benchmarked train step, written four ways with the same math.

An MLP of `depth` blocks `relu(BatchNorm(Linear(x)))` (width `width`,
training mode: batch statistics, running averages updated with momentum
0.99, epsilon 1e-5, fast variance `E[x^2] - E[x]^2`), mean-squared error
against a fixed target, one `optax.adam(1e-3)` update of the Params.

- (a) `raw`:    hand-written JAX on dicts of arrays + `jax.jit`. No nnxfn.
- (b) `nnxfn`:  `nnxfn.jit` + `nnxfn.Optimizer` on `nnx.Linear`/`nnx.BatchNorm`.
- (c) `flax.*`: the same Module code on `flax.nnx` (`nnx.jit`, `nnx.cached_partial`,
                `nnx.jit_partial(..., graph=False)`).
- (d) `eqx`:    an Equinox model of the same blocks + `eqx.filter_jit`.

Every variant starts from the same initial values (`init_values`), so their
losses agree step by step (checked by `check_same_math`).

Each `build_*` returns a `Runner`: `step()` runs one training step and
returns the loss (a JAX array), `lower()` returns the step's `Lowered`
(for compiled memory), and `fresh()` builds a new, never-called runner
(new jit wrapper, new state) to time the first call (trace + compile).
"""

from __future__ import annotations

import dataclasses
import typing as tp

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

MOMENTUM = 0.99
EPSILON = 1e-5
LEARNING_RATE = 1e-3
BATCH = 8
WIDTH = 32


@dataclasses.dataclass
class Runner:
    step: tp.Callable[[], tp.Any]
    lower: tp.Callable[[], tp.Any] | None
    fresh: tp.Callable[[], "Runner"]


# -- shared initial values and data ---------------------------------------------------
def init_values(depth: int, width: int = WIDTH, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Per block: kernel (lecun normal), bias, scale, bn_bias, mean, var (numpy)."""
    rng = np.random.default_rng(seed)
    blocks = []
    for _ in range(depth):
        blocks.append(
            dict(
                kernel=(rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32),
                bias=(0.01 * rng.standard_normal(width)).astype(np.float32),
                scale=(1.0 + 0.01 * rng.standard_normal(width)).astype(np.float32),
                bn_bias=(0.01 * rng.standard_normal(width)).astype(np.float32),
                mean=np.zeros(width, np.float32),
                var=np.ones(width, np.float32),
            )
        )
    return blocks


def make_data(width: int = WIDTH, batch: int = BATCH, seed: int = 1) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((batch, width)).astype(np.float32))
    y = jnp.asarray(rng.standard_normal((batch, width)).astype(np.float32))
    return x, y


# -- (a) hand-written JAX ------------------------------------------------------------------
def block_math(
    h: jax.Array, kernel: jax.Array, bias: jax.Array, scale: jax.Array, bn_bias: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One block by hand: (output, batch mean, batch var).

    The operations are in the order `nnx.Linear`/`nnx.BatchNorm` apply them
    (vectors reshaped to `(1, n)`, `x**2` taken before the means), so the
    gradients agree bit for bit: in a deep net a different rounding order in
    the backward pass is amplified until the losses visibly diverge.
    """
    row = lambda v: jnp.reshape(v, (1, -1))
    h = h @ kernel + row(bias)
    sq = lax.square(h)
    mu = h.mean(0)
    var = jnp.maximum(0.0, sq.mean(0) - lax.square(mu))
    mul = lax.rsqrt(row(var) + EPSILON) * row(scale)
    return jax.nn.relu((h - row(mu)) * mul + row(bn_bias)), mu, var


def _raw_loss(params: list, stats: list, x: jax.Array, y: jax.Array) -> tuple[jax.Array, list]:
    h = x
    new_stats = []
    for p, s in zip(params, stats):
        h, mu, var = block_math(h, p["kernel"], p["bias"], p["scale"], p["bn_bias"])
        new_stats.append(
            {
                "mean": MOMENTUM * s["mean"] + (1 - MOMENTUM) * mu,
                "var": MOMENTUM * s["var"] + (1 - MOMENTUM) * var,
            }
        )
    return jnp.mean((h - y) ** 2), new_stats


def build_raw(depth: int, width: int = WIDTH, donate: bool = False) -> Runner:
    values = init_values(depth, width)
    x, y = make_data(width)
    tx = optax.adam(LEARNING_RATE)

    def train_step(params, stats, opt_state, x, y):
        (loss, stats), grads = jax.value_and_grad(_raw_loss, has_aux=True)(params, stats, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state, loss

    jitted = jax.jit(train_step, donate_argnums=(0, 1, 2) if donate else ())
    state = {
        "params": [{k: jnp.asarray(b[k]) for k in ("kernel", "bias", "scale", "bn_bias")} for b in values],
        "stats": [{k: jnp.asarray(b[k]) for k in ("mean", "var")} for b in values],
    }
    state["opt"] = tx.init(state["params"])

    def step():
        state["params"], state["stats"], state["opt"], loss = jitted(
            state["params"], state["stats"], state["opt"], x, y
        )
        return loss

    def lower():
        return jitted.lower(state["params"], state["stats"], state["opt"], x, y)

    return Runner(step, lower, lambda: build_raw(depth, width, donate))


# -- (b), (c) the same Module code on nnxfn and on flax.nnx -----------------------------
def define_mlp(nnx: tp.Any) -> type:
    """The MLP class written against the `nnx` namespace given (nnxfn or flax.nnx)."""

    class Block(nnx.Module):
        def __init__(self, width: int, rngs: tp.Any):
            self.linear = nnx.Linear(width, width, rngs=rngs)
            self.bn = nnx.BatchNorm(width, momentum=MOMENTUM, epsilon=EPSILON, rngs=rngs)

        def __call__(self, x: jax.Array) -> jax.Array:
            return jax.nn.relu(self.bn(self.linear(x)))

    class MLP(nnx.Module):
        def __init__(self, depth: int, width: int, rngs: tp.Any):
            self.blocks = nnx.List([Block(width, rngs) for _ in range(depth)])

        def __call__(self, x: jax.Array) -> jax.Array:
            for block in self.blocks:
                x = block(x)
            return x

    return MLP


def make_nnx_model(nnx: tp.Any, depth: int, width: int = WIDTH) -> tp.Any:
    model = define_mlp(nnx)(depth, width, nnx.Rngs(0))
    for block, v in zip(model.blocks, init_values(depth, width)):
        block.linear.kernel.value = jnp.asarray(v["kernel"])
        block.linear.bias.value = jnp.asarray(v["bias"])
        block.bn.scale.value = jnp.asarray(v["scale"])
        block.bn.bias.value = jnp.asarray(v["bn_bias"])
        block.bn.mean.value = jnp.asarray(v["mean"])
        block.bn.var.value = jnp.asarray(v["var"])
    return model


def make_train_step(nnx: tp.Any) -> tp.Callable:
    def train_step(model, optimizer, x, y):
        def loss_fn(model):
            return jnp.mean((model(x) - y) ** 2)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    return train_step


def build_nnxfn(depth: int, width: int = WIDTH, donate: bool = False) -> Runner:
    import nnxfn as nnx

    model = make_nnx_model(nnx, depth, width)
    optimizer = nnx.Optimizer(model, optax.adam(LEARNING_RATE), wrt=nnx.Param)
    x, y = make_data(width)
    jit_kwargs = {"donate_argnums": (0, 1)} if donate else {}
    step_fn = nnx.jit(make_train_step(nnx), **jit_kwargs)

    return Runner(
        lambda: step_fn(model, optimizer, x, y),
        lambda: step_fn.lower(model, optimizer, x, y),
        lambda: build_nnxfn(depth, width, donate),
    )


def _flax_setup(depth: int, width: int) -> tuple:
    from flax import nnx

    model = make_nnx_model(nnx, depth, width)
    optimizer = nnx.Optimizer(model, optax.adam(LEARNING_RATE), wrt=nnx.Param)
    return nnx, model, optimizer, make_data(width)


def build_flax_jit(depth: int, width: int = WIDTH) -> Runner:
    nnx, model, optimizer, (x, y) = _flax_setup(depth, width)
    step_fn = nnx.jit(make_train_step(nnx))
    return Runner(
        lambda: step_fn(model, optimizer, x, y),
        lambda: step_fn.lower(model, optimizer, x, y),
        lambda: build_flax_jit(depth, width),
    )


def build_flax_cached_partial(depth: int, width: int = WIDTH) -> Runner:
    nnx, model, optimizer, (x, y) = _flax_setup(depth, width)
    jitted = nnx.jit(make_train_step(nnx))
    step_fn = nnx.cached_partial(jitted, model, optimizer)
    return Runner(
        lambda: step_fn(x, y),
        lambda: jitted.lower(model, optimizer, x, y),  # the same compiled program
        lambda: build_flax_cached_partial(depth, width),
    )


def build_flax_jit_partial(depth: int, width: int = WIDTH) -> Runner:
    nnx, model, optimizer, (x, y) = _flax_setup(depth, width)
    step_fn = nnx.jit_partial(make_train_step(nnx), model, optimizer, graph=False)
    lower = getattr(step_fn, "lower", None)
    return Runner(
        lambda: step_fn(x, y),
        (lambda: lower(x, y)) if lower is not None else None,
        lambda: build_flax_jit_partial(depth, width),
    )


# -- (d) Equinox ------------------------------------------------------------------------
def _define_eqx() -> tuple:
    import equinox as eqx

    class Linear(eqx.Module):
        kernel: jax.Array
        bias: jax.Array

    class BatchNorm(eqx.Module):
        scale: jax.Array
        bias: jax.Array
        mean: jax.Array
        var: jax.Array

    class Block(eqx.Module):
        linear: Linear
        bn: BatchNorm

        def __call__(self, x):
            """(output, (new running mean, new running var))."""
            bn = self.bn
            h, mu, var = block_math(x, self.linear.kernel, self.linear.bias, bn.scale, bn.bias)
            return h, (MOMENTUM * bn.mean + (1 - MOMENTUM) * mu, MOMENTUM * bn.var + (1 - MOMENTUM) * var)

    class MLP(eqx.Module):
        blocks: list

        def __call__(self, x):
            stats = []
            for block in self.blocks:
                x, s = block(x)
                stats.append(s)
            return x, stats

    return eqx, Linear, BatchNorm, Block, MLP


def build_eqx(depth: int, width: int = WIDTH) -> Runner:
    eqx, Linear, BatchNorm, Block, MLP = _define_eqx()
    a = jnp.asarray
    model = MLP(
        [
            Block(
                Linear(a(v["kernel"]), a(v["bias"])),
                BatchNorm(a(v["scale"]), a(v["bn_bias"]), a(v["mean"]), a(v["var"])),
            )
            for v in init_values(depth, width)
        ]
    )
    stats_of = lambda m: [leaf for b in m.blocks for leaf in (b.bn.mean, b.bn.var)]
    trainable = jax.tree.map(lambda _: True, model)
    trainable = eqx.tree_at(stats_of, trainable, [False] * (2 * depth))
    tx = optax.adam(LEARNING_RATE)
    x, y = make_data(width)

    @eqx.filter_jit
    def train_step(model, opt_state, x, y):
        params, rest = eqx.partition(model, trainable)

        def loss_fn(params):
            out, stats = eqx.combine(params, rest)(x)
            return jnp.mean((out - y) ** 2), stats

        (loss, stats), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        model = eqx.apply_updates(model, updates)
        model = eqx.tree_at(stats_of, model, [s for pair in stats for s in pair])
        return model, opt_state, loss

    state = {"model": model, "opt": tx.init(eqx.filter(model, trainable))}

    def step():
        state["model"], state["opt"], loss = train_step(state["model"], state["opt"], x, y)
        return loss

    return Runner(
        step,
        lambda: train_step.lower(state["model"], state["opt"], x, y).lowered,  # eqx wraps jax's
        lambda: build_eqx(depth, width),
    )


# -- registry ---------------------------------------------------------------------------
def available(include_flax: bool = True, include_eqx: bool = True) -> dict[str, tp.Callable[..., Runner]]:
    """Variant name -> builder, for the packages that are installed."""
    variants: dict[str, tp.Callable[..., Runner]] = {"raw": build_raw, "nnxfn": build_nnxfn}
    if include_flax:
        try:
            from flax import nnx  # noqa: F401
        except ImportError:
            pass
        else:
            variants["flax.jit"] = build_flax_jit
            if hasattr(nnx, "cached_partial"):
                variants["flax.cached_partial"] = build_flax_cached_partial
            if hasattr(nnx, "jit_partial"):
                variants["flax.jit_partial(graph=False)"] = build_flax_jit_partial
    if include_eqx:
        try:
            import equinox  # noqa: F401
        except ImportError:
            pass
        else:
            variants["eqx.filter_jit"] = build_eqx
    return variants


def check_same_math(
    runners: dict[str, Runner],
    steps: int = 3,
    rtol: float = 2e-5,
    strict: tp.Container[str] = ("raw", "nnxfn"),
) -> dict[str, list[float]]:
    """Run `steps` steps of each runner; the losses must agree with `raw`.

    A mismatch raises for the variants in `strict` and is reported (returned
    as NaN-free loss lists, with a warning) for the others.
    """
    losses = {name: [float(r.step()) for _ in range(steps)] for name, r in runners.items()}
    ref = np.asarray(losses["raw"])
    for name, got in losses.items():
        ok = np.allclose(got, ref, rtol=rtol, atol=1e-6)
        if not ok:
            msg = f"losses of {name!r} differ from raw JAX: {got} vs {ref.tolist()}"
            if name in strict:
                raise AssertionError(msg)
            import warnings

            warnings.warn(msg, stacklevel=2)
    return losses
