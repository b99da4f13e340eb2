"""The package's shape: imports read as the architecture (no cycles), modules and constructors
that fit in a head. Imports inside functions count too: a lazy import that dodges a cycle is
still a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sgm"
MAX_MODULE_LINES = 400
MAX_CONSTRUCTOR_LINES = 80


def _modules(package: Path = PACKAGE) -> dict[str, Path]:
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _imported(node: ast.AST, module: str, is_package: bool, modules: dict) -> list[str]:
    """sgm modules that one import statement loads (a submodule, not its parent package)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            anchor = module.split(".")
            anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
            base = ".".join(anchor + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        names = [
            f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
            for alias in node.names
        ]
    else:
        return []
    found = []
    for name in names:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name and name != module:
            found.append(name)
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, dict[str, int]]:
    """module -> {imported module: line of the first such import}, every import in the file."""
    modules = _modules(package)
    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        edges = graph.setdefault(module, {})
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            for target in _imported(node, module, is_package, modules):
                edges.setdefault(target, node.lineno)
    return graph


def import_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    edges = [
        f"{a} -> {b} (line {line})" for a in cycle for b, line in graph[a].items() if b in cycle
    ]
    return "; ".join(edges)


def long_modules() -> list[str]:
    return [
        f"{path.relative_to(PACKAGE.parent)}: {n} lines"
        for path in _modules().values()
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    ]


def long_constructors() -> list[str]:
    found = []
    for path in _modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                        n = item.end_lineno - item.lineno + 1
                        if n > MAX_CONSTRUCTOR_LINES:
                            where = path.relative_to(PACKAGE.parent)
                            found.append(f"{where}:{item.lineno} {node.name}.__init__: {n} lines")
    return found


def test_graph_sees_every_import_form(tmp_path):
    # The walker must find plain, relative and function-local imports, or a clean result is void.
    files = {
        "pkg/__init__.py": "from . import a\n",
        "pkg/a.py": "import os\nfrom .sub import b\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/b.py": "def f():\n    from ..c import name\n",
        "pkg/c.py": "import pkg.sub.d\nfrom pkg.sub import b\n",
        "pkg/sub/d.py": "from .. import c\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path / "pkg")
    assert graph == {
        "pkg": {"pkg.a": 1},
        "pkg.a": {"pkg.sub.b": 2},
        "pkg.c": {"pkg.sub.d": 1, "pkg.sub.b": 2},
        "pkg.sub": {},
        "pkg.sub.b": {"pkg.c": 2},
        "pkg.sub.d": {"pkg.c": 1},
    }
    assert import_cycles(graph) == [["pkg.c", "pkg.sub.b", "pkg.sub.d"]]


def test_cycle_finder_finds_a_cycle():
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}}
    assert import_cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycles():
    graph = import_graph()
    cycles = import_cycles(graph)
    assert not cycles, "import cycles: " + " | ".join(describe(c, graph) for c in cycles)


def test_modules_fit_in_a_head():
    assert not long_modules()


def test_constructors_fit_in_a_head():
    assert not long_constructors()


if __name__ == "__main__":
    graph = import_graph()
    for cycle in import_cycles(graph):
        print("cycle:", describe(cycle, graph))
    for line in long_modules() + long_constructors():
        print(line)
