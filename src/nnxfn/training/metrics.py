"""Metrics: running statistics held in `MetricState` Variables.

Every update is a pure `jnp` computation written into Variables, so a metric
can be passed to (and updated inside) `nnx.jit`; `compute()` returns arrays.

Usage::

    metrics = MultiMetric(accuracy=Accuracy(), loss=Average("loss"))
    metrics.update(logits=logits, labels=labels, loss=loss)
    metrics.compute()   # {'accuracy': Array(...), 'loss': Array(...)}
    metrics.reset()
"""

from __future__ import annotations

import typing as tp

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from nnxfn.core import Filter, split as split_graph
from nnxfn.facade.module import Object
from nnxfn.facade.variables import Variable


class MetricState(Variable):
    """The running state of a metric (totals, counts, moments)."""


class Metric(Object):
    """Base class: `update(**kwargs)`, `compute()`, `reset()`."""

    def reset(self) -> None:
        raise NotImplementedError

    def update(self, **kwargs: tp.Any) -> None:  # Any: subclasses name and type their own
        raise NotImplementedError

    def compute(self) -> object:
        raise NotImplementedError

    def split(self, *filters: Filter) -> tuple[tp.Any, ...]:
        """`nnx.split(self, *filters)`."""
        return split_graph(self, *filters)


def _arg(metric: Metric, kwargs: dict[str, object], name: str) -> jax.Array:
    if name not in kwargs:
        raise TypeError(_missing_arg(type(metric).__name__, name, kwargs))
    value = kwargs[name]
    return jnp.asarray(value.raw_value if isinstance(value, Variable) else value)


def _mask_for(values: jax.Array, mask: ArrayLike | None, where: str) -> jax.Array:
    if mask is None:
        return jnp.ones(values.shape, dtype=bool)
    mask = jnp.asarray(mask)
    try:
        return jnp.broadcast_to(mask, values.shape).astype(bool)
    except ValueError:
        raise ValueError(_bad_mask(where, mask.shape, values.shape)) from None


class Average(Metric):
    """The mean of every value seen: `update(values=x)` (or `argname=x`)."""

    def __init__(self, argname: str = "values"):
        self.argname = argname
        self.total = MetricState(jnp.array(0.0, dtype=jnp.float32))
        self.count = MetricState(jnp.array(0, dtype=jnp.int32))

    def reset(self) -> None:
        self.total.value = jnp.zeros_like(self.total.value)
        self.count.value = jnp.zeros_like(self.count.value)

    def update(self, *, mask: ArrayLike | None = None, **kwargs: object) -> None:
        if mask is not None and isinstance(kwargs.get(self.argname), (int, float)):
            raise ValueError(_scalar_with_mask(type(self).__name__, self.argname))
        values = _arg(self, kwargs, self.argname)
        keep = _mask_for(values, mask, f"{type(self).__name__}.update")
        total = jnp.sum(jnp.where(keep, values, 0), dtype=self.total.value.dtype)
        self.total.value = self.total.value + total
        self.count.value = self.count.value + jnp.sum(keep, dtype=self.count.value.dtype)

    def compute(self) -> jax.Array:
        return self.total.value / self.count.value


class Accuracy(Average):
    """Fraction of correct predictions.

    `update(logits=..., labels=...)`: with `threshold=None`, `logits` has one
    more (class) axis than the integer `labels` and the prediction is its
    argmax; with a threshold, `logits` has the shape of `labels` and the
    prediction is `logits > threshold` (labels are 0/1 or bool).
    """

    def __init__(self, threshold: float | None = None, *args: str, **kwargs: str):
        if threshold is not None and not isinstance(threshold, float):
            raise TypeError(_bad_threshold(threshold))
        self.threshold = threshold
        super().__init__(*args, **kwargs)

    def update(  # type: ignore[override]  # needs logits/labels, where Metric.update takes any keywords
        self, *, logits: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None, **_: object
    ) -> None:
        logits, labels = jnp.asarray(logits), jnp.asarray(labels)
        if self.threshold is None:
            if logits.ndim != labels.ndim + 1 or logits.shape[:-1] != labels.shape:
                raise ValueError(_bad_logits(logits.shape, labels.shape))
            if not jnp.issubdtype(labels.dtype, jnp.integer):
                raise ValueError(_bad_labels(labels.dtype))
            preds = jnp.argmax(logits, axis=-1)
        else:
            if logits.shape != labels.shape:
                raise ValueError(_bad_binary(logits.shape, labels.shape))
            if not (jnp.issubdtype(labels.dtype, jnp.integer) or labels.dtype == jnp.bool_):
                raise ValueError(_bad_labels(labels.dtype))
            preds = logits >= self.threshold
            labels = labels > 0
        correct = (preds == labels).astype(jnp.float32)
        super().update(mask=mask, **{self.argname: correct})


class Statistics(tp.NamedTuple):
    """What `Welford.compute()` returns; `.std`/`.var`/`.variance` are shortcuts."""

    mean: jax.Array
    standard_error_of_mean: jax.Array
    standard_deviation: jax.Array

    @property
    def std(self) -> jax.Array:
        return self.standard_deviation

    def replace(self, **fields: jax.Array) -> Statistics:
        """A copy with some fields changed (as Flax's dataclass `replace`)."""
        return self._replace(**fields)

    @property
    def variance(self) -> jax.Array:
        return self.standard_deviation**2

    @property
    def var(self) -> jax.Array:
        return self.variance


class Welford(Metric):
    """Running mean and (population) variance of every value seen.

    Batches are merged with Chan et al.'s parallel form of Welford's
    algorithm, so large batches stay numerically stable.
    """

    def __init__(self, argname: str = "values"):
        self.argname = argname
        self.count = MetricState(jnp.array(0, dtype=jnp.int32))
        self.mean = MetricState(jnp.array(0.0, dtype=jnp.float32))
        self.m2 = MetricState(jnp.array(0.0, dtype=jnp.float32))

    def reset(self) -> None:
        for var in (self.count, self.mean, self.m2):
            var.value = jnp.zeros_like(var.value)

    def update(self, *, mask: ArrayLike | None = None, **kwargs: object) -> None:
        values = _arg(self, kwargs, self.argname)
        keep = _mask_for(values, mask, "Welford.update")
        dtype = self.mean.value.dtype
        values = values.astype(dtype)
        n_b = jnp.sum(keep, dtype=self.count.value.dtype)
        nb = n_b.astype(dtype)
        mean_b = jnp.sum(jnp.where(keep, values, 0), dtype=dtype) / jnp.maximum(nb, 1)
        m2_b = jnp.sum(jnp.where(keep, (values - mean_b) ** 2, 0), dtype=dtype)
        na = self.count.value.astype(dtype)
        n = jnp.maximum(na + nb, 1)
        delta = mean_b - self.mean.value
        self.mean.value = self.mean.value + delta * nb / n
        self.m2.value = self.m2.value + m2_b + delta**2 * na * nb / n
        self.count.value = self.count.value + n_b

    def compute(self) -> Statistics:
        count = self.count.value.astype(self.mean.value.dtype)
        variance = self.m2.value / count
        std = jnp.sqrt(variance)
        return Statistics(self.mean.value, std / jnp.sqrt(count), std)


class MultiMetric(Metric):
    """Several metrics updated together: `update(**kwargs)` forwards every
    keyword to every metric (each takes what it needs)."""

    def __init__(self, **metrics: Metric):
        for name, metric in metrics.items():
            if not isinstance(metric, Metric):
                raise TypeError(_not_a_metric(name, metric))
            setattr(self, name, metric)
        self._metric_names = tuple(metrics)

    def _metrics(self) -> tp.Iterator[tuple[str, Metric]]:
        for name in self._metric_names:
            yield name, getattr(self, name)

    def reset(self) -> None:
        for _, metric in self._metrics():
            metric.reset()

    def update(self, **updates: object) -> None:
        """Every keyword goes to every metric. `mask=` is one mask for all of them,
        or a dict {metric name: mask} (metrics without an entry get no mask)."""
        mask = updates.pop("mask", None)
        for name, metric in self._metrics():
            own = mask.get(name) if isinstance(mask, dict) else mask
            if own is None:
                metric.update(**updates)
            else:
                metric.update(**updates, mask=own)

    def compute(self) -> dict[str, object]:
        return {name: metric.compute() for name, metric in self._metrics()}


# -- error messages -----------------------------------------------------------------
def _missing_arg(cls: str, name: str, kwargs: dict[str, object]) -> str:
    return (
        f"{cls}.update: no keyword argument {name!r} (got {sorted(kwargs)}). "
        f"Pass it as `metric.update({name}=x)`, or build the metric with the name "
        f"you pass, e.g. `{cls}(argname='loss')` for `update(loss=x)`."
    )


def _bad_mask(where: str, mask: tuple, values: tuple) -> str:
    return (
        f"{where}: mask of shape {mask} does not broadcast to the values' shape "
        f"{values}. Give one mask entry per value (or per example)."
    )


def _scalar_with_mask(cls: str, name: str) -> str:
    return (
        f"{cls}.update: a mask was given, so {name} should be a jax array (one value "
        f"per mask entry), got a Python scalar. Pass `{name}=jnp.asarray(...)`, or no mask."
    )


def _bad_threshold(threshold: object) -> str:
    return (
        f"Accuracy: threshold must be a float (e.g. 0.5), got {threshold!r} of type "
        f"{type(threshold).__name__}."
    )


def _bad_logits(logits: tuple, labels: tuple) -> str:
    return (
        "Accuracy.update: For multi-class classification, logits need one more (class) "
        f"axis than labels: logits of shape {logits} need one more (class) axis than "
        f"labels of shape {labels}, e.g. logits (batch, classes) with labels (batch,). "
        "For binary predictions pass `Accuracy(threshold=0.5)` and same-shaped logits."
    )


def _bad_labels(dtype: object) -> str:
    return (
        f"Accuracy.update: labels must be integer class indices (0/1 or bool with a "
        f"threshold), got {dtype}. "
        "Convert one-hot labels with `labels.argmax(-1)`."
    )


def _bad_binary(logits: tuple, labels: tuple) -> str:
    return (
        f"Accuracy(threshold=...).update: For binary classification, logits of shape "
        f"{logits} and labels of shape {labels} must have the same shape (one score per label)."
    )


def _not_a_metric(name: str, value: object) -> str:
    return (
        f"MultiMetric: {name}= is a {type(value).__name__}, not a Metric. Pass metric "
        f"objects, e.g. `MultiMetric({name}=nnx.metrics.Average('{name}'))`."
    )
