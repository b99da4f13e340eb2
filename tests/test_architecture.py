"""The package's shape: imports read as the architecture (no cycles, and only down the
floors of LAYERS), modules and constructors that fit in a head. Imports inside functions
count too: a lazy import that dodges a cycle, or reaches up a floor, still does."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sgm"
MAX_MODULE_LINES = 400
MAX_CONSTRUCTOR_LINES = 80

# The floors of sgm, lowest first (the README's layout): a module may import its own floor
# and the ones below it, never one above. The ground floor is every module directly in
# sgm/ (errors, targets, devices, precision, offload, checkpoint, config*, cli,
# output_files, util, ...) and the packaged configs. lora/ sits on modules/ rather than
# beside convert/: it adapts the networks' layers and needs nothing above them, while
# DiffusionEngine (training with ``lora_config``) and the engine loader (adapter files
# at sampling time) both use it.
LAYERS = (
    ("configs",),  # the ground floor's own package
    ("modules",),
    ("lora",),
    ("models",),
    ("inference",),
    ("convert",),
    ("data", "training"),
    ("demo",),
    ("commands",),
)


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


def layer_of(module: str, packages: set[str], layers=LAYERS) -> int | None:
    """Floor of a dotted module name; None for a subpackage no floor names. ``packages``:
    the subpackages of the root package (a module directly in it is on the ground floor)."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] not in packages:
        return 0
    return next((i for i, names in enumerate(layers) if parts[1] in names), None)


def subpackages(graph: dict[str, dict[str, int]]) -> set[str]:
    return {name.split(".")[1] for name in graph if name.count(".") >= 2}


def unplaced(graph: dict[str, dict[str, int]], layers=LAYERS) -> list[str]:
    packages = subpackages(graph)
    return sorted(name for name in packages if layer_of(f"_.{name}._", packages, layers) is None)


def upward_imports(graph: dict[str, dict[str, int]], layers=LAYERS) -> list[str]:
    """Every import of a module on a higher floor than the importer's."""
    packages = subpackages(graph)
    found = []
    for module, edges in graph.items():
        floor = layer_of(module, packages, layers)
        for target, line in edges.items():
            if floor is not None and (layer_of(target, packages, layers) or 0) > floor:
                found.append(f"{module} -> {target} (line {line})")
    return found


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


def test_layer_check_finds_an_upward_import(tmp_path):
    # A lazy import from the ground floor up to a package, and one between packages.
    files = {
        "pkg/__init__.py": "",
        "pkg/errors.py": "def f():\n    from .high import run\n",
        "pkg/low/__init__.py": "from ..errors import f\n",
        "pkg/low/a.py": "from pkg.high.b import g\nfrom . import c\n",
        "pkg/low/c.py": "",
        "pkg/high/__init__.py": "from ..low import a\n",
        "pkg/high/b.py": "import pkg.errors\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path / "pkg")
    layers = ((), ("low",), ("high",))
    assert sorted(upward_imports(graph, layers)) == [
        "pkg.errors -> pkg.high (line 2)",
        "pkg.low.a -> pkg.high.b (line 1)",
    ]
    assert unplaced(graph, layers) == [] and unplaced(graph, ((), ("low",))) == ["high"]


def test_every_package_is_on_a_floor():
    assert not unplaced(import_graph()), "add these sgm packages to LAYERS"


def test_imports_point_down():
    found = upward_imports(import_graph())
    assert not found, "imports from a lower floor to a higher one: " + "; ".join(found)


def test_modules_fit_in_a_head():
    assert not long_modules()


def test_constructors_fit_in_a_head():
    assert not long_constructors()


if __name__ == "__main__":
    graph = import_graph()
    for cycle in import_cycles(graph):
        print("cycle:", describe(cycle, graph))
    for line in unplaced(graph) + upward_imports(graph):
        print(line)
    for line in long_modules() + long_constructors():
        print(line)
