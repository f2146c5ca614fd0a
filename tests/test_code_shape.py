"""The engine's shape, checked over the source (see `tests/code_scan.py`; run it to list findings)."""

import code_scan


def test_no_import_cycle_even_through_function_level_imports():
    edges, _ = code_scan.import_graph(code_scan.modules())
    assert code_scan.cycles(edges) == []


def test_no_module_imports_another_modules_private_name():
    _, private = code_scan.import_graph(code_scan.modules())
    assert private == []


def test_every_public_name_is_defined_once():
    assert code_scan.duplicates(code_scan.modules()) == {}


def test_no_wide_positional_tuple_crosses_a_function_in_core_or_transforms():
    assert code_scan.wide_tuples(code_scan.modules()) == []


def test_the_scan_finds_what_it_looks_for(tmp_path, monkeypatch):
    """The checks are not vacuous: a planted cycle, private import, duplicate and wide tuple are found."""
    pkg = tmp_path / "nnxfn"
    (pkg / "core").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "__init__.py").write_text("")
    (pkg / "core" / "a.py").write_text("def f():\n    from nnxfn.core import b\n    return (1, 2, 3, 4)\n")
    (pkg / "core" / "b.py").write_text(
        "from nnxfn.core.a import f as _x\nfrom nnxfn.core.a import _hidden\ndef f():\n    pass\n"
    )
    monkeypatch.setattr(code_scan, "SRC", tmp_path)
    monkeypatch.setattr(code_scan, "PACKAGE", pkg)
    mods = code_scan.modules()
    edges, private = code_scan.import_graph(mods)
    assert code_scan.cycles(edges) == [["nnxfn.core.a", "nnxfn.core.b"]]
    assert private == ["nnxfn.core.b: from nnxfn.core.a import _hidden"]
    assert code_scan.duplicates(mods) == {"f": ["nnxfn.core.a", "nnxfn.core.b"]}
    assert code_scan.wide_tuples(mods) == ["nnxfn.core.a:3 returns a 4+-tuple"]
