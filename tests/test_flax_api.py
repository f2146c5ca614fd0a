"""Every public name of `flax.nnx` 0.12.8 exists in nnxfn, and its functions accept
the same parameters.

`tests/data/flax_nnx_api.json` records, for each public name of flax.nnx 0.12.8,
its kind and (for functions) its parameter names. The list was read from the
installed flax; when flax is importable here the live `dir(flax.nnx)` is
compared too, so a missing export can never come back.
"""

import importlib
import importlib.util
import inspect
import json
import pathlib
import types

import pytest

import nnxfn

API = json.loads((pathlib.Path(__file__).parent / "data" / "flax_nnx_api.json").read_text())

# Names nnxfn deliberately does not provide, with the reason (README "How nnxfn differs").
ABSENT = {
    "bridge": "Linen interop: nnxfn has no Linen",
    "deprecations": "a Flax-internal module (deprecation helpers), no public API",
    "proxy_caller": "a Flax-internal module (method-call proxies), no public API",
    "wrappers": "a Flax-internal module (transform wrappers), no public API",
}


def test_every_flax_name_exists():
    missing = sorted(n for n in API if n not in ABSENT and not hasattr(nnxfn, n))
    assert missing == []


@pytest.mark.skipif(importlib.util.find_spec("flax") is None, reason="flax not installed")
def test_recorded_names_match_installed_flax():
    import flax.nnx

    live = {n for n in dir(flax.nnx) if not n.startswith("_")}
    if getattr(importlib.import_module("flax"), "__version__", "") == "0.12.8":
        assert live == set(API)
    missing = sorted(n for n in live if n not in ABSENT and not hasattr(nnxfn, n))
    assert missing == []


def _accepted(fn):
    sig = inspect.signature(fn)
    kinds = {p.kind for p in sig.parameters.values()}
    return (
        set(sig.parameters),
        inspect.Parameter.VAR_KEYWORD in kinds,
        inspect.Parameter.VAR_POSITIONAL in kinds,
    )


@pytest.mark.parametrize("name", sorted(n for n, v in API.items() if v["params"] and n not in ABSENT))
def test_functions_accept_flax_parameters(name):
    ours = getattr(nnxfn, name)
    if isinstance(ours, types.ModuleType):
        pytest.fail(f"nnxfn.{name} is a module; flax's is a function")
    try:
        names, var_kw, var_pos = _accepted(ours)
    except (TypeError, ValueError):
        pytest.skip("no introspectable signature")
    n_positional = sum(
        p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        for p in inspect.signature(ours).parameters.values()
    )
    flax_positional = 0
    for pname, kind in API[name]["params"]:
        if kind == "VAR_KEYWORD":
            continue
        if kind == "POSITIONAL_ONLY":  # only the count matters
            flax_positional += 1
            assert flax_positional <= n_positional or var_pos, (
                f"nnxfn.{name} takes fewer positional arguments"
            )
            continue
        if kind == "VAR_POSITIONAL":
            assert var_pos, f"nnxfn.{name} does not take *{pname}"
            continue
        assert pname in names or var_kw, f"nnxfn.{name} does not accept {pname}="
