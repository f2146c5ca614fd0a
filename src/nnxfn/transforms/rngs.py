"""Prepare random streams for vmap/scan: `split_rngs`, `fork_rngs`, `with_rngs`.

`split_rngs(node, splits=n)` and `fork_rngs(node)` change `node`'s streams
in place and return `SplitBackups` (a context manager; `restore_rngs`
undoes the change). Called without a node they are decorators that do this
around each call. `with_rngs(node, split=..., fork=..., broadcast=...)`
returns a copy of `node` with new streams and leaves `node`'s keys alone.

Flax's `graph=`/`graph_updates=` are accepted. Only the copy-or-in-place
choice of `split_rngs`/`fork_rngs` follows them, because it decides what the
call returns: an explicit `graph=False` or `graph_updates=False` returns a
copy of `node` with the new streams, as in Flax.
"""

from __future__ import annotations

import dataclasses
import functools
import typing as tp

import jax
import jax.numpy as jnp

from nnxfn import core
from nnxfn.core import treemode
from nnxfn.core.errors import path_str
from nnxfn.core.filters import Filter, Predicate
from nnxfn.facade.rngs import RngStream
from nnxfn.transforms.boundary import Path, is_graph_object

Shape = tp.Union[int, tuple[int, ...]]
#: a shape for every stream, or `{filter: shape}` (first matching filter wins); None: none
SplitSpec = tp.Union[Shape, tp.Mapping[Filter, Shape], None]
#: `fork_rngs`'s `split`: as `SplitSpec`, a None shape forking without splitting
ForkSplitSpec = tp.Union[Shape, tp.Mapping[Filter, Shape | None], None]
N = tp.TypeVar("N")
Backup = tp.Union[tuple[RngStream, jax.Array, jax.Array], tuple[RngStream, jax.Array]]
_MISSING: tp.Any = object()


class SplitBackups:
    """The keys and counts some streams had before a `split_rngs`/`fork_rngs`;
    `restore_rngs(backups)` or leaving `with backups:` puts them back."""

    def __init__(self, backups: list[Backup]):
        self.backups = backups

    def __iter__(self) -> tp.Iterator[Backup]:
        return iter(self.backups)

    def __len__(self) -> int:
        return len(self.backups)

    def replace(self, backups: list[Backup]) -> SplitBackups:
        """A copy holding other backups (as Flax's dataclass `replace`)."""
        return SplitBackups(backups)

    def __enter__(self) -> SplitBackups:
        return self

    def __exit__(self, *exc: object) -> None:
        restore_rngs(self)


def restore_rngs(backups: tp.Iterable[Backup], /) -> None:
    """Put back the keys (and counts) recorded by `split_rngs`/`fork_rngs`/`backup_keys`."""
    for backup in backups:
        stream = backup[0]
        stream.key.value = backup[1]
        if len(backup) == 3:
            stream.count.value = backup[2]


def backup_keys(node: object, /, *, graph: bool | None = None) -> list[Backup]:
    """`(stream, key)` for every stream in `node`, for `restore_rngs`."""
    return [(s, s.key[...]) for _, s in _streams(node, ...)]


def _check_unknown(name: str, unknown: dict) -> None:
    if unknown:
        raise TypeError(f"{name}() got unexpected keyword argument(s) {sorted(unknown)}.")


def _streams(tree: object, only: Filter) -> list[tuple[Path, RngStream]]:
    """(path, stream) for each stream in `tree` whose key and count both match
    `only`, each shared stream once (at its first path)."""
    pred = core.to_predicate(only)
    return [
        (path, value)
        for path, value in core.iter_graph(tree)
        if isinstance(value, RngStream)
        and pred((*path, "key"), value.key)
        and pred((*path, "count"), value.count)
    ]


def _split_shape(stream: RngStream, splits: Shape, squeeze: bool) -> tuple[jax.Array, tuple]:
    key = jax.random.split(stream(), splits)
    if squeeze:
        return key[0], tuple(stream.count.shape)
    return key, (*((splits,) if isinstance(splits, int) else tuple(splits)), *stream.count.shape)


def _copy_mode(graph: bool | None, graph_updates: bool | None) -> bool:
    return graph is False or graph_updates is False


def _map_streams(node: N, only: Filter, make: tp.Callable[[Path, RngStream], RngStream | None]) -> N:
    """A copy of `node` in which each stream selected by `only` takes the key and
    count of `make(path, original_stream)` (None keeps it as is). `make` sees the
    original, so drawing from it advances the caller's stream, as in Flax."""
    new = {id(stream): make(path, stream) for path, stream in _streams(node, only)}
    copy = core.clone(node)  # same structure and sharing: its streams pair up in order
    originals = [v for _, v in core.iter_graph(node) if isinstance(v, RngStream)]
    copies = [v for _, v in core.iter_graph(copy) if isinstance(v, RngStream)]
    for original, stream in zip(originals, copies):
        made = new.get(id(original))
        if made is not None:
            stream.key, stream.count = made.key, made.count
    _share_unchanged(node, copy, {id(s) for s, m in zip(copies, originals) if new.get(id(m)) is None})
    return copy


def _share_unchanged(original: object, copy: object, kept_streams: set[int]) -> None:
    """Put the original Variables back into `copy` (the streams themselves stay
    new objects, as in Flax), except in the split/forked streams, which have
    their own keys and counts: a write through the copy (e.g. a counter inside
    a scan) reaches `original`."""
    from nnxfn.core.registry import lookup
    from nnxfn.core.variable_like import VariableLike

    seen: set[int] = set()

    def walk(o: object, c: object) -> None:
        impl = lookup(type(c))
        if impl is None or id(c) in seen or lookup(type(o)) is None:
            return
        seen.add(id(c))
        o_children = dict(impl.children(o)) if type(o) is type(c) else {}
        for k, child in list(impl.children(c)):
            if k not in o_children:
                continue
            orig = o_children[k]
            if isinstance(child, VariableLike) and isinstance(orig, VariableLike):
                impl.set_child(c, k, orig)
            elif isinstance(child, RngStream) and id(child) in kept_streams:
                walk(orig, child)  # a new stream object holding the original Variables
            elif isinstance(child, RngStream):
                continue  # a new stream: its own key and count
            else:
                walk(orig, child)

    walk(original, copy)


def split_rngs(
    node: tp.Any = _MISSING,
    /,
    *,
    splits: Shape,
    only: Filter = ...,
    squeeze: bool = False,
    graph: bool | None = None,
    graph_updates: bool | None = None,
    **unknown: object,
) -> tp.Any:
    """Split the keys of the streams in `node` into arrays of shape `splits`
    (after one draw each), with counts of the same shape, so that
    `nnx.vmap`/`nnx.scan` over axis 0 give each element its own keys.

    `backups = nnx.split_rngs(rngs, splits=4)` splits in place (`with` or
    `nnx.restore_rngs(backups)` puts the old keys back, counts advanced by
    one); `@nnx.split_rngs(splits=4)` does that around every call of the
    decorated function. `graph_updates=False` returns a split copy instead.
    """
    _check_unknown("split_rngs", unknown)
    if squeeze and splits != 1:
        raise ValueError(f"split_rngs: squeeze=True needs splits=1, got splits={splits!r}.")
    copy = _copy_mode(graph, graph_updates)
    if node is _MISSING or (callable(node) and not is_graph_object(node) and not isinstance(node, RngStream)):

        def decorate(fn: tp.Callable) -> tp.Callable:
            @functools.wraps(fn)
            def wrapper(*args: tp.Any, **kwargs: tp.Any) -> tp.Any:
                if copy:
                    args, kwargs = _split_copy((args, kwargs), splits, only, squeeze)
                    return fn(*args, **kwargs)
                with _split_in_place((args, kwargs), splits, only, squeeze):
                    return fn(*args, **kwargs)

            return wrapper

        return decorate if node is _MISSING else decorate(node)
    treemode.check_node(node, "split_rngs", graph)
    if copy:
        return _split_copy(node, splits, only, squeeze)
    return _split_in_place(node, splits, only, squeeze)


def _split_in_place(node: object, splits: Shape, only: Filter, squeeze: bool) -> SplitBackups:
    backups: list[Backup] = []
    for _, stream in _streams(node, only):
        key, count_shape = _split_shape(stream, splits, squeeze)
        backups.append((stream, stream.key[...], stream.count[...]))
        stream.key.value = key
        stream.count.value = jnp.zeros(count_shape, jnp.uint32)
    return SplitBackups(backups)


def _split_copy(node: N, splits: Shape, only: Filter, squeeze: bool) -> N:
    def make(path: tuple, stream: RngStream) -> RngStream:
        key, _ = _split_shape(stream, splits, squeeze)
        return RngStream(key, tag=stream.tag)  # its count has the key's shape

    return _map_streams(node, only, make)


def _fork_rngs_rules(split: ForkSplitSpec) -> list[tuple[Predicate, Shape | None]]:
    if split is None:
        split = {...: None}
    elif isinstance(split, (int, tuple)):
        split = {...: split}
    return [(core.to_predicate(f), v) for f, v in split.items()]


def _fork_rule(
    rules: list[tuple[Predicate, Shape | None]], path: Path, stream: RngStream
) -> tuple[bool, Shape | None]:
    for pred, value in rules:
        if pred((*path, "key"), stream.key) and pred((*path, "count"), stream.count):
            return True, value
    return False, None


def fork_rngs(
    node: tp.Any = _MISSING,
    /,
    *,
    split: ForkSplitSpec = None,
    graph: bool | None = None,
    graph_updates: bool | None = None,
    **unknown: object,
) -> tp.Any:
    """Give the streams in `node` a fresh key each (drawn from the stream),
    split into arrays for the streams `split` selects (`split=4`, or
    `{filter: shape or None}`). In place, returning `SplitBackups` like
    `split_rngs`; a decorator without `node`; a copy with `graph_updates=False`.
    """
    _check_unknown("fork_rngs", unknown)
    rules = _fork_rngs_rules(split)
    copy = _copy_mode(graph, graph_updates)
    if node is _MISSING:

        def decorate(fn: tp.Callable) -> tp.Callable:
            @functools.wraps(fn)
            def wrapper(*args: tp.Any, **kwargs: tp.Any) -> tp.Any:
                if copy:
                    args, kwargs = _fork_copy((args, kwargs), rules)
                    return fn(*args, **kwargs)
                with _fork_in_place((args, kwargs), rules):
                    return fn(*args, **kwargs)

            return wrapper

        return decorate
    treemode.check_node(node, "fork_rngs", graph)
    if copy:
        return _fork_copy(node, rules)
    return _fork_in_place(node, rules)


def _fork_in_place(node: object, rules: list[tuple[Predicate, Shape | None]]) -> SplitBackups:
    backups: list[Backup] = []
    for path, stream in _streams(node, ...):
        hit, shape = _fork_rule(rules, path, stream)
        if hit:
            forked = stream.fork(split=shape)
            backups.append((stream, stream.key[...], stream.count[...]))
            stream.key.value = forked.key[...]
            stream.count.value = forked.count[...]
    return SplitBackups(backups)


def _fork_copy(node: N, rules: list[tuple[Predicate, Shape | None]]) -> N:
    def make(path: tuple, stream: RngStream) -> RngStream | None:
        hit, shape = _fork_rule(rules, path, stream)
        return stream.fork(split=shape) if hit else None

    return _map_streams(node, ..., make)


def with_rngs(
    node: tp.Any = _MISSING,
    /,
    *,
    split: SplitSpec = None,
    fork: Filter | list[Filter] | tuple[Filter, ...] | None = None,
    broadcast: SplitSpec = None,
    only: Filter = True,
    graph: bool | None = None,
    graph_updates: bool | None = None,
    **unknown: object,
) -> tp.Any:
    """A copy of `node` whose streams are split, broadcast or forked.

    `split`/`broadcast`: a shape for every stream, or `{filter: shape}` (first
    matching filter wins); `fork`: a filter (or list of filters) selecting
    streams to fork; `only` limits all three. Streams matching no rule are
    copied unchanged. Each new key is drawn from the original stream (its
    count advances; its key Variable stays). Without `node`: a decorator that
    applies this to the decorated function's arguments.

    >>> rngs = nnx.Rngs(params=0, dropout=1)
    >>> new = nnx.with_rngs(rngs, split={'params': 4}, fork=...)
    >>> new.params.key.shape, new.dropout.key.shape
    ((4,), ())
    """
    _check_unknown("with_rngs", unknown)
    if node is _MISSING:
        return _with_rngs_decorator(split=split, fork=fork, broadcast=broadcast, only=only)
    rules = _StreamRules(
        split=_shape_rules(split), broadcast=_shape_rules(broadcast), fork=_fork_filter_rules(fork)
    )
    return _map_streams(node, only, rules.remake)


def _with_rngs_decorator(
    *,
    split: SplitSpec,
    fork: Filter | list[Filter] | tuple[Filter, ...] | None,
    broadcast: SplitSpec,
    only: Filter,
) -> tp.Callable[[tp.Callable[..., tp.Any]], tp.Callable[..., tp.Any]]:
    """`with_rngs` without a node: apply it to the decorated function's arguments."""

    def decorate(fn: tp.Callable[..., tp.Any]) -> tp.Callable[..., tp.Any]:
        @functools.wraps(fn)
        def wrapper(*args: tp.Any, **kwargs: tp.Any) -> tp.Any:
            args, kwargs = with_rngs((args, kwargs), split=split, fork=fork, broadcast=broadcast, only=only)
            return fn(*args, **kwargs)

        return wrapper

    return decorate


class _Rule(tp.NamedTuple):
    """One `with_rngs` rule: streams matching `filter` get `value` (a shape; None for fork)."""

    filter: Filter
    predicate: Predicate
    value: Shape | None


def _shape_rules(spec: SplitSpec) -> list[_Rule]:
    """`split`/`broadcast`: a shape for every stream, or `{filter: shape}`."""
    if spec is None:
        return []
    if isinstance(spec, (int, tuple)):
        spec = {...: spec}
    return [_Rule(f, core.to_predicate(f), v) for f, v in spec.items()]


def _fork_filter_rules(fork: Filter | list[Filter] | tuple[Filter, ...] | None) -> list[_Rule]:
    """`fork`: a filter or a list of filters."""
    if fork is None:
        return []
    filters = list(fork) if isinstance(fork, (list, tuple)) else [fork]
    return [_Rule(f, core.to_predicate(f), None) for f in filters]


def _first(rules: list[_Rule], path: Path, stream: RngStream) -> _Rule | None:
    """The first rule whose filter matches the stream's key at `path`."""
    for rule in rules:
        if rule.predicate((*path, "key"), stream.key):
            return rule
    return None


@dataclasses.dataclass(frozen=True)
class _StreamRules:
    """`with_rngs`'s rules; `remake` gives a stream's replacement."""

    split: list[_Rule]
    broadcast: list[_Rule]
    fork: list[_Rule]

    def remake(self, path: Path, stream: RngStream) -> RngStream | None:
        """The stream split, broadcast or forked as its rule says (None: no rule matches)."""
        found = {
            "split": _first(self.split, path, stream),
            "broadcast": _first(self.broadcast, path, stream),
            "fork": _first(self.fork, path, stream),
        }
        hits = {k: v for k, v in found.items() if v is not None}
        specific = [k for k, v in hits.items() if v.filter is not Ellipsis and v.filter is not True]
        if len(hits) > 1 and len(specific) > 1:
            rules = "; ".join(f"{k} by filter {v.filter!r}" for k, v in hits.items())
            raise ValueError(
                f"with_rngs: the stream at {path_str(path)} matches multiple rules ({rules}). "
                "Make the filters disjoint, e.g. `fork=nnx.Not('params')`."
            )
        split, broadcast = hits.get("split"), hits.get("broadcast")
        if split is not None and split.value is not None:
            return stream.split(split.value)
        if broadcast is not None and broadcast.value is not None:
            return stream.broadcast(broadcast.value)
        if "fork" in hits:
            return stream.fork()
        return None
