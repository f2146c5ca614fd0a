"""Static checks on the shape of `src/nnxfn` (read by `tests/test_code_shape.py`).

Run directly (`python tests/code_scan.py`) to print every finding. Checks:

- import cycles among nnxfn modules, counting imports inside functions too;
- imports of another module's `_private` name;
- public names (module-level `def`/`class` without an underscore) defined in
  more than one module;
- positional tuples of more than 3 fields crossing a function boundary in
  `core/` and `transforms/`: returned, unpacked from a call, or stored on an
  attribute, passed to a call, or read by a constant index past the third
  field (a named record says what each field is).
"""

from __future__ import annotations

import ast
import collections
import pathlib

SRC = pathlib.Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "nnxfn"
WIDE = 3
# Calls whose tuple argument is a set of types or hashed parts, not a record.
NOT_RECORDS = {"isinstance", "issubclass", "hash"}


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, tuple[pathlib.Path, ast.Module]]:
    return {module_name(p): (p, ast.parse(p.read_text(), str(p))) for p in sorted(PACKAGE.rglob("*.py"))}


def _import_targets(name: str, path: pathlib.Path, node: ast.AST, known: set[str]):
    """(module imported, name imported or None) for each nnxfn import in `node`."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name in known:
                yield alias.name, None
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        if not target.startswith("nnxfn"):
            return
        for alias in node.names:
            full = f"{target}.{alias.name}"
            yield (full, None) if full in known else (target, alias.name)


def import_graph(mods) -> tuple[dict[str, set[str]], list[str]]:
    """Module -> modules it imports (anywhere in it), and the `_private` imports."""
    known = set(mods)
    edges: dict[str, set[str]] = collections.defaultdict(set)
    private = []
    for name, (path, tree) in mods.items():
        for node in ast.walk(tree):
            for target, imported in _import_targets(name, path, node, known):
                if target in known and target != name:
                    edges[name].add(target)
                if imported and imported.startswith("_") and not imported.startswith("__"):
                    if target != name:
                        private.append(f"{name}: from {target} import {imported}")
    return edges, private


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    nodes = set(edges) | {w for ws in edges.values() for w in ws}
    for root in sorted(nodes):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    component = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.append(w)
                        if w == v:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def duplicates(mods) -> dict[str, list[str]]:
    """Public module-level names defined by `def`/`class` in more than one module."""
    where: dict[str, list[str]] = collections.defaultdict(list)
    for name, (_, tree) in mods.items():
        seen = set()
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if not node.name.startswith("_") and node.name not in seen:
                    seen.add(node.name)
                    where[node.name].append(name)
    return {n: ms for n, ms in sorted(where.items()) if len(ms) > 1}


def _wide(node: ast.AST | None) -> bool:
    return (
        isinstance(node, ast.Tuple)
        and len(node.elts) > WIDE
        and not any(isinstance(e, ast.Starred) for e in node.elts)
    )


def wide_tuples(mods, packages=("nnxfn.core", "nnxfn.transforms")) -> list[str]:
    """Tuples of more than WIDE fields returned, unpacked from a call or stored on an attribute."""
    found = []
    for name, (_, tree) in mods.items():
        if not name.startswith(packages):
            continue
        for node in ast.walk(tree):
            what = None
            if isinstance(node, ast.Return) and _wide(node.value):
                what = "returns"
            elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
                if any(_wide(t) for t in node.targets):
                    what = "unpacks a call into"
            elif isinstance(node, ast.Assign) and _wide(node.value):
                if any(isinstance(t, ast.Attribute) for t in node.targets):
                    what = "stores on an attribute"
            elif isinstance(node, (ast.For, ast.comprehension)) and _wide(node.target):
                what = "iterates as"
            elif isinstance(node, ast.Call) and any(_wide(a) for a in node.args):
                if not (isinstance(node.func, ast.Name) and node.func.id in NOT_RECORDS):
                    what = "passes"
            elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
                field = node.slice.value
                if isinstance(field, int) and not isinstance(field, bool) and field >= WIDE:
                    what = f"reads field [{field}] of"
            if what:
                found.append(f"{name}:{node.lineno} {what} a {WIDE + 1}+-tuple")
    return found


def main() -> None:
    mods = modules()
    edges, private = import_graph(mods)
    for title, items in [
        ("import cycles", [" <-> ".join(c) for c in cycles(edges)]),
        ("private imports", private),
        ("duplicate public names", [f"{n}: {', '.join(m)}" for n, m in duplicates(mods).items()]),
        ("wide tuples", wide_tuples(mods)),
    ]:
        print(f"{title}: {len(items)}")
        for item in items:
            print("  ", item)


if __name__ == "__main__":
    main()
