"""Metrics vs numpy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnxfn.core import merge, split, state
from nnxfn.training.metrics import (
    Accuracy,
    Average,
    Metric,
    MetricState,
    MultiMetric,
    Statistics,
    Welford,
)

RNG = np.random.default_rng(0)
BATCHES = [RNG.normal(size=n).astype(np.float32) * 3 + 1 for n in (5, 17, 1, 40)]


def test_average_matches_numpy():
    metric = Average()
    for b in BATCHES:
        metric.update(values=b)
    np.testing.assert_allclose(metric.compute(), np.concatenate(BATCHES).mean(), rtol=1e-5)
    metric.reset()
    assert int(metric.count.value) == 0 and float(metric.total.value) == 0.0


def test_average_argname_scalars_and_mask():
    metric = Average("loss")
    metric.update(loss=2.0)
    metric.update(loss=jnp.array(4.0), other=1)  # unknown keywords are ignored
    assert float(metric.compute()) == pytest.approx(3.0)
    masked = Average()
    values = np.arange(6.0, dtype=np.float32)
    mask = np.array([1, 0, 1, 0, 1, 0], bool)
    masked.update(values=values, mask=mask)
    assert float(masked.compute()) == pytest.approx(values[mask].mean())


def test_average_errors():
    with pytest.raises(TypeError, match=r"no keyword argument 'loss' \(got \['values'\]\).*argname='loss'"):
        Average("loss").update(values=1.0)
    with pytest.raises(ValueError, match=r"mask of shape \(2,\) does not broadcast.*\(3,\)"):
        Average().update(values=jnp.ones(3), mask=jnp.ones(2))


def test_accuracy_argmax_matches_numpy():
    metric = Accuracy()
    correct = total = 0
    for n in (4, 9, 30):
        logits = RNG.normal(size=(n, 5)).astype(np.float32)
        labels = RNG.integers(0, 5, size=n)
        metric.update(logits=logits, labels=labels, loss=1.0)
        correct += (logits.argmax(-1) == labels).sum()
        total += n
    np.testing.assert_allclose(metric.compute(), correct / total, rtol=1e-6)


def test_accuracy_threshold():
    metric = Accuracy(threshold=0.5)
    logits = np.array([0.1, 0.7, 0.6, 0.2], np.float32)
    labels = np.array([0, 1, 0, 1])
    metric.update(logits=logits, labels=labels)
    assert float(metric.compute()) == pytest.approx(0.5)


def test_accuracy_errors():
    with pytest.raises(ValueError, match=r"logits of shape \(4,\) need one more \(class\) axis"):
        Accuracy().update(logits=jnp.ones(4), labels=jnp.ones(4, int))
    with pytest.raises(ValueError, match="labels must be integer class indices"):
        Accuracy().update(logits=jnp.ones((4, 2)), labels=jnp.ones(4))
    with pytest.raises(ValueError, match="must have the same shape"):
        Accuracy(threshold=0.5).update(logits=jnp.ones((4, 2)), labels=jnp.ones(4, int))


def test_welford_matches_numpy():
    metric = Welford()
    for b in BATCHES:
        metric.update(values=b)
    stats = metric.compute()
    allv = np.concatenate(BATCHES).astype(np.float64)
    assert isinstance(stats, Statistics)
    np.testing.assert_allclose(stats.mean, allv.mean(), rtol=1e-5)
    np.testing.assert_allclose(stats.standard_deviation, allv.std(), rtol=1e-5)
    np.testing.assert_allclose(stats.std, allv.std(), rtol=1e-5)
    np.testing.assert_allclose(stats.var, allv.var(), rtol=1e-5)
    np.testing.assert_allclose(stats.standard_error_of_mean, allv.std() / np.sqrt(allv.size), rtol=1e-5)
    metric.reset()
    assert int(metric.count.value) == 0


def test_welford_large_offset_is_stable():
    metric = Welford()
    values = (1e4 + RNG.normal(size=(10, 100))).astype(np.float32)
    for row in values:
        metric.update(values=row)
    np.testing.assert_allclose(metric.compute().std, values.astype(np.float64).std(), rtol=1e-3)


def test_multimetric_update_compute_reset():
    metrics = MultiMetric(accuracy=Accuracy(), loss=Average("loss"), spread=Welford("loss"))
    logits = np.array([[0.0, 1.0], [1.0, 0.0], [0.2, 0.8]], np.float32)
    metrics.update(logits=logits, labels=np.array([1, 1, 1]), loss=np.array([1.0, 3.0]))
    out = metrics.compute()
    assert set(out) == {"accuracy", "loss", "spread"}
    assert float(out["accuracy"]) == pytest.approx(2 / 3)
    assert float(out["loss"]) == pytest.approx(2.0)
    assert float(out["spread"].std) == pytest.approx(1.0)
    metrics.reset()
    assert int(metrics.loss.count.value) == 0 and int(metrics.accuracy.count.value) == 0
    with pytest.raises(TypeError, match=r"loss= is a float, not a Metric"):
        MultiMetric(loss=1.0)


def test_metric_state_types_and_jit():
    metrics = MultiMetric(accuracy=Accuracy(), loss=Average("loss"))
    leaves = state(metrics).flat_state()
    assert leaves and all(isinstance(v, MetricState) for _, v in leaves)
    graphdef, st = split(metrics)

    @jax.jit
    def step(st, logits, labels, loss):
        m = merge(graphdef, st)
        m.update(logits=logits, labels=labels, loss=loss)
        return split(m)[1]

    for i in range(3):
        st = step(st, jnp.array([[0.0, 1.0]]), jnp.array([i % 2]), jnp.array(float(i)))
    out = merge(graphdef, st).compute()
    assert float(out["accuracy"]) == pytest.approx(1 / 3)
    assert float(out["loss"]) == pytest.approx(1.0)
    before = [v.value.dtype for _, v in leaves]
    assert [v.value.dtype for _, v in st.flat_state()] == before  # dtypes stay fixed


def test_metric_base_and_split():
    assert issubclass(Average, Metric)
    graphdef, st = Average().split()
    assert set(st.to_pure_dict()) == {"count", "total"}


def test_multimetric_mask_per_metric():
    metrics = MultiMetric(accuracy=Accuracy(), loss=Average())
    logits = jnp.array([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    labels = jnp.array([1, 0, 0, 1])
    values = jnp.array([1.0, 2.0, 3.0, 10.0])
    keep = jnp.array([True, True, True, False])
    metrics.update(logits=logits, labels=labels, values=values, mask={"loss": keep})
    out = metrics.compute()
    assert float(out["accuracy"]) == pytest.approx(0.5)  # no mask for accuracy
    assert float(out["loss"]) == pytest.approx(2.0)  # (1 + 2 + 3) / 3
    metrics.update(logits=logits, labels=labels, values=values, mask=keep)  # one mask for all
    out = metrics.compute()
    assert float(out["accuracy"]) == pytest.approx((2 + 2) / (4 + 3))
    assert float(out["loss"]) == pytest.approx(12.0 / 6)


def test_flax_argument_rules():
    with pytest.raises(ValueError, match="values should be a jax array"):
        Average().update(values=2.0, mask=jnp.ones(1))
    with pytest.raises(TypeError, match="threshold must be a float"):
        Accuracy(threshold=1)
    metric = Accuracy(threshold=0.5)
    metric.update(logits=jnp.array([0.5, 0.4]), labels=jnp.array([1, 0]))  # >= threshold
    assert float(metric.compute()) == 1.0
    with pytest.raises(ValueError, match="For multi-class classification"):
        Accuracy().update(logits=jnp.ones((2, 2, 2)), labels=jnp.ones(4, int))
    with pytest.raises(ValueError, match="For binary classification"):
        Accuracy(threshold=0.5).update(logits=jnp.ones(4), labels=jnp.ones((2, 2), int))
