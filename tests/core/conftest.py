"""Every core test runs twice: with nnxfn's cross-call caches on and off.

A cache only saves work (`nnxfn/core/caches.py`), so each test must give the
same results either way; `caching_on` names the run in the test id
(`test_x[cache-on]` / `test_x[cache-off]`).
"""

import pytest

from nnxfn.core import caches


@pytest.fixture(autouse=True, params=[True, False], ids=["cache-on", "cache-off"])
def caching_on(request: pytest.FixtureRequest):
    with caches.caching(request.param):
        yield request.param
