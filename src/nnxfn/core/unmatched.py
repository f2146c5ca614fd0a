"""Warn when a string, path or regex filter selects nothing.

`nnx.state(model, 'kernal')` is a tag filter (as in flax) that matches no
Variable; silently returning an empty State makes a typo train nothing. When
a string, `PathContains` or compiled-regex filter matches none of the leaves,
this warns with the closest paths and the tags present. An empty result for
a *type* filter (`nnx.BatchStat` on a model without BatchNorm) stays silent,
as in flax: asking for a kind of Variable that is absent is normal.

>>> import warnings
>>> with warnings.catch_warnings(record=True) as w:
...     warnings.simplefilter("always")
...     warn_unmatched(("kernal",), [[]], [("l1", "kernel"), ("l1", "bias")], [1, 2])
>>> "closest paths: l1/kernel" in str(w[0].message)
True
"""

from __future__ import annotations

import difflib
import os
import re
import sys
import types
import typing as tp
import warnings

from nnxfn.core import filters as filterlib


class UnmatchedFilterWarning(UserWarning):
    """A string, path or regex filter matched no leaf."""


def _path_text(path: tuple) -> str:
    return "/".join(str(k) for k in path)


def _word_filters(f: tp.Any) -> list[tuple[str, str]]:
    """(description, word to compare with paths) for each string-like part of `f`."""
    if isinstance(f, str):
        return [(f"the tag filter {f!r}", f)]
    if isinstance(f, filterlib.WithTag):
        return [(f"WithTag({f.tag!r})", f.tag)]
    if isinstance(f, filterlib.PathContains):
        return [(f"PathContains({f.key!r})", str(f.key))]
    if isinstance(f, re.Pattern):
        return [(f"the regex filter {f.pattern!r}", f.pattern)]
    if isinstance(f, filterlib.PathRegex):
        return [(f"PathRegex({f.pattern.pattern!r})", f.pattern.pattern)]
    if isinstance(f, (tuple, list)):
        return [part for g in f for part in _word_filters(g)]
    if type(f) is filterlib.Any:
        return [part for g in f.filters for part in _word_filters(g)]
    return []


def _closest(word: str, paths: list[tuple], limit: int = 3) -> list[str]:
    """Paths whose full text or any key is most similar to `word`."""
    scored = []
    for path in paths:
        text = _path_text(path)
        keys = [text, *(str(k) for k in path)]
        score = max(difflib.SequenceMatcher(None, word.lower(), k.lower()).ratio() for k in keys)
        scored.append((score, text))
    scored.sort(key=lambda s: -s[0])
    return [text for score, text in scored[:limit] if score >= 0.5]


def _closest_key(word: str, paths: list[tuple]) -> str:
    keys = {str(k) for path in paths for k in path}
    found = difflib.get_close_matches(word, sorted(keys), n=1, cutoff=0.5)
    return found[0] if found else word


def _tags(leaves: tp.Sequence) -> list[str]:
    found = set()
    for leaf in leaves:
        items = getattr(leaf, "metadata_items", None)
        tag = dict(items()).get("tag") if items is not None else None
        if isinstance(tag, str):
            found.add(tag)
    return sorted(found)


def _stacklevel() -> int:
    """The first frame outside nnxfn (so the warning points at the user's line)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame: types.FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def warn_unmatched(
    filters: tuple, buckets: list[list[int]], paths: tp.Sequence[tuple], leaves: tp.Sequence
) -> None:
    """Warn for each string/path/regex filter whose bucket is empty (others stay silent)."""
    if not paths:
        return
    for f, bucket in zip(filters, buckets):
        if bucket:
            continue
        for described, word in _word_filters(f):
            close = _closest(word, list(paths))
            tags = _tags(leaves)
            message = f"{described} matched none of the {len(paths)} Variables here."
            if described.startswith("the tag"):
                key = _closest_key(word, list(paths))
                message += (
                    " A string filter selects Variables by their `tag` metadata "
                    f"(tags present: {', '.join(tags) or 'none'}); to select by path "
                    f"use nnx.PathContains({key!r}) or a regex such as "
                    f"re.compile(r'{key}$')."
                )
            if close:
                message += f" The closest paths: {', '.join(close)}."
            warnings.warn(message, UnmatchedFilterWarning, stacklevel=_stacklevel())
