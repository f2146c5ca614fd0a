"""Imports only point downwards: core knows nothing above it."""

import ast
import pathlib

import nnxfn

SRC = pathlib.Path(nnxfn.__file__).parent
ABOVE_CORE = ("nnxfn.facade", "nnxfn.transforms", "nnxfn.nn", "nnxfn.training", "nnxfn.interop")
ABOVE_FACADE = ("nnxfn.transforms", "nnxfn.nn", "nnxfn.training", "nnxfn.interop")


def _imports(path: pathlib.Path, package: str) -> list[str]:
    """Every module name imported by the file (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.append(module)
            # `from nnxfn import facade` imports a subpackage
            names += [f"{module}.{alias.name}" for alias in node.names]
    return names


def _violations(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    files = sorted((SRC / folder).rglob("*.py"))
    assert files, f"no files under {folder}"
    bad = []
    for f in files:
        for name in _imports(f, f"nnxfn.{folder}"):
            if any(name == x or name.startswith(x + ".") for x in forbidden):
                bad.append(f"{f.relative_to(SRC)} imports {name}")
    return bad


def test_core_imports_nothing_above_it():
    assert _violations("core", ABOVE_CORE) == []


def test_facade_imports_no_transforms_nn_training():
    assert _violations("facade", ABOVE_FACADE) == []


def test_checker_detects_violations(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import nnxfn.facade.module\n"
        "from nnxfn.transforms import jit\n"
        "from nnxfn import nn\n"
        "def f():\n    from ..facade import variables\n"
    )
    names = _imports(bad, "nnxfn.core")
    assert "nnxfn.facade.module" in names
    assert "nnxfn.transforms" in names
    assert "nnxfn.nn" in names
    assert "nnxfn.facade" in names  # relative import inside a function resolved


def test_core_only_imports_core_from_nnxfn():
    for f in sorted((SRC / "core").glob("*.py")):
        for name in _imports(f, "nnxfn.core"):
            if name == "nnxfn" or name.startswith("nnxfn."):
                assert name.startswith("nnxfn.core"), f"{f.name} imports {name}"
