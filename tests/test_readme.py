"""README.md's Python examples run as written."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert _blocks(), "README.md should hold at least one ```python example"


@pytest.mark.parametrize("index", range(len(_blocks())))
def test_readme_example_runs(index: int):
    namespace: dict = {}
    exec(compile(_blocks()[index], f"README.md[{index}]", "exec"), namespace)


def test_readme_commands_match_makefile():
    text = README.read_text()
    make = (README.parent / "Makefile").read_text()
    for target in ("demo", "lm", "test"):
        assert f"make {target}" in text
        assert re.search(rf"^{target}:", make, flags=re.M)
    ci = (README.parent / ".ci" / "run").read_text()
    assert "make test" in ci
