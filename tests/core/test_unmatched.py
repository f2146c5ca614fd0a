"""A string/path/regex filter that selects nothing warns with the closest paths."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

import nnxfn as nnx
from nnxfn.core.unmatched import UnmatchedFilterWarning


class Model(nnx.Module):
    def __init__(self):
        self.l1 = nnx.Linear(3, 8, rngs=nnx.Rngs(0))
        self.l2 = nnx.Linear(8, 2, rngs=nnx.Rngs(1))


def test_misspelled_string_filter_warns_with_closest_paths_and_the_fix():
    model = Model()
    with pytest.warns(UnmatchedFilterWarning) as record:
        state = nnx.state(model, "kernal")
    assert len(state.flat_state()) == 0  # still flax's result: a tag filter matching nothing
    message = str(record[0].message)
    assert "the tag filter 'kernal' matched none of the 4 Variables" in message
    assert "closest paths: l1/kernel, l2/kernel" in message
    assert "nnx.PathContains('kernel')" in message
    assert record[0].filename == __file__  # points at the user's line


def test_path_and_regex_filters_warn_in_split_and_state():
    model = Model()
    with pytest.warns(UnmatchedFilterWarning, match=r"PathContains\('bais'\).*l1/bias, l2/bias"):
        _, empty, rest = nnx.split(model, nnx.PathContains("bais"), ...)
    assert len(empty.flat_state()) == 0 and len(rest.flat_state()) == 4
    with pytest.warns(UnmatchedFilterWarning, match=r"regex filter 'kernal\$'"):
        nnx.state(model, re.compile(r"kernal$"))
    with pytest.warns(UnmatchedFilterWarning, match="'kernal'"):
        nnx.state(model, ("kernal", nnx.BatchStat))  # the string inside a tuple


def test_regex_filter_selects_by_path():
    model = Model()
    kernels = nnx.state(model, re.compile(r"kernel$"))
    assert sorted(p for p, _ in kernels.flat_state()) == [("l1", "kernel"), ("l2", "kernel")]
    np.testing.assert_array_equal(kernels["l1"]["kernel"][...], model.l1.kernel[...])
    assert nnx.PathRegex("^l2/")((("l2", "bias")), None)
    assert not nnx.PathRegex("^l2/")((("l1", "bias")), None)


def test_type_filters_and_matching_filters_stay_silent():
    model = Model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(nnx.state(model, nnx.BatchStat).flat_state()) == 0  # absent type: as in flax
        nnx.state(model, nnx.PathContains("kernel"))
        nnx.split(model, nnx.Param, ...)
        nnx.state(nnx.Module(), "anything")  # nothing to select from


def test_docstring_example_runs():
    import doctest

    from nnxfn.core import unmatched

    result = doctest.testmod(unmatched)
    assert result.failed == 0 and result.attempted > 0
