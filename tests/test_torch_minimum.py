"""The library and the benchmarks use no torch API newer than the oldest supported torch.

torch 2.11 is the oldest release supported (the lent GPU machines run it; the project is
developed on 2.13). tests/fixtures/torch_api_since_2_11.txt.gz lists every module, name,
class member and function parameter that the installed torch's sources have and 2.11's
lack (benchmarks/torch_api_diff.py). Every torch reference in sgm/ and benchmarks/ is
resolved through its imports (``import torch.nn.functional as F``, ``from torch.x import
y``); one that names such an API, or passes such a parameter by keyword, must sit behind a
fallback: inside ``if hasattr(...)``/``getattr``, a version test, or a ``try`` that catches
AttributeError, ImportError or TypeError.
"""

from __future__ import annotations

import ast
import functools
import gzip
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
MINIMUM = "2.11"
DIFF = ROOT / "tests" / "fixtures" / "torch_api_since_2_11.txt.gz"
SCANNED = ("sgm", "benchmarks")
GUARD_EXCEPTIONS = {
    "AttributeError",
    "ImportError",
    "ModuleNotFoundError",
    "TypeError",
    "Exception",
}


@functools.lru_cache(maxsize=None)
def load_diff(path: Path = DIFF) -> tuple[set[str], set[str], str]:
    names, params, header = set(), set(), ""
    for line in gzip.decompress(path.read_bytes()).decode().splitlines():
        kind, _, value = line.partition(" ")
        if kind == "#":
            header = value
        elif kind == "name":
            names.add(value)
        elif kind == "param":
            params.add(value)
    return names, params, header


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> dotted torch path, from every import in the file."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "torch" or a.name.startswith("torch."):
                    out[a.asname or "torch"] = a.name if a.asname else "torch"
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "torch" or node.module.startswith("torch."):
                for a in node.names:
                    if a.name != "*":
                        out[a.asname or a.name] = f"{node.module}.{a.name}"
    return out


def _chain(node: ast.AST) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


def _guarded(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """True when `node` sits inside a fallback (hasattr/getattr/version test, or a try)."""
    child, node = node, parents.get(node)
    while node is not None:
        if isinstance(node, ast.Try) and child in node.body:
            for handler in node.handlers:
                caught = handler.type
                names = [caught] if not isinstance(caught, ast.Tuple) else caught.elts
                if caught is None or any(
                    isinstance(n, ast.Name) and n.id in GUARD_EXCEPTIONS for n in names
                ):
                    return True
        if isinstance(node, (ast.If, ast.IfExp)) and child is not node.test:
            test = ast.unparse(node.test)
            if "hasattr(" in test or "getattr(" in test or "version" in test.lower():
                return True
        if isinstance(node, ast.BoolOp) and child is not node.values[0]:
            first = ast.unparse(node.values[0])
            if "hasattr(" in first or "version" in first.lower():
                return True
        child, node = node, parents.get(node)
    return False


def torch_uses(source: str, wanted=None) -> list[tuple[str, int, tuple[str, ...], bool]]:
    """(dotted torch path, line, keywords passed, guarded) for each torch reference.

    `wanted(path, keywords)`, when given, picks the references to return.
    """
    tree = ast.parse(source)
    aliases = _aliases(tree)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "torch" or node.module.startswith("torch."):
                for a in node.names:
                    path = node.module if a.name == "*" else f"{node.module}.{a.name}"
                    found.append((path, node, ()))
            continue
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("torch."):
                    found.append((a.name, node, ()))
            continue
        if not isinstance(node, (ast.Attribute, ast.Name)):
            continue
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            continue  # rebinding an imported name
        if isinstance(parents.get(node), ast.Attribute):
            continue  # only whole chains
        chain = _chain(node)
        if not chain or chain[0] not in aliases:
            continue
        path = ".".join([aliases[chain[0]], *chain[1:]])
        call = parents.get(node)
        keywords = ()
        if isinstance(call, ast.Call) and call.func is node:
            keywords = tuple(k.arg for k in call.keywords if k.arg)
        found.append((path, node, keywords))
    return [
        (path, node.lineno, keywords, _guarded(node, parents))
        for path, node, keywords in found
        if wanted is None or wanted(path, keywords)
    ]


def newer_than_minimum(path: str, keywords, names: set[str], params: set[str]) -> list[str]:
    """The parts of one reference that the minimum torch lacks."""
    parts = path.split(".")
    prefixes = [".".join(parts[:i]) for i in range(2, len(parts) + 1)]
    found = [p for p in prefixes if p in names][:1]
    found += [f"{path}({k})" for k in keywords if f"{path}({k})" in params]
    if path.endswith(".config.patch"):  # config.patch(key=value) sets config.key
        base = path[: -len(".patch")]
        found += [f"{base}.{k}" for k in keywords if f"{base}.{k}" in names]
    return found


def unguarded_new_uses(root: Path = ROOT) -> list[str]:
    names, params, _ = load_diff()

    def is_new(path, keywords):
        return bool(newer_than_minimum(path, keywords, names, params))

    problems = []
    for folder in SCANNED:
        for file in sorted((root / folder).rglob("*.py")):
            for path, line, keywords, guarded in torch_uses(file.read_text(), is_new):
                new = newer_than_minimum(path, keywords, names, params)
                if not guarded:
                    rel = file.relative_to(root)
                    problems.append(f"{rel}:{line}: {', '.join(new)} is newer than torch {MINIMUM}")
    return problems


def test_diff_matches_installed_torch():
    _, _, header = load_diff()
    installed = torch.__version__.split("+")[0]
    assert header.startswith(f"torch {installed} "), (
        f"{DIFF.name} was made for {header!r}, torch here is {installed}: "
        "run benchmarks/torch_api_diff.py again"
    )


def test_library_and_benchmarks_use_no_torch_api_newer_than_minimum():
    problems = unguarded_new_uses()
    assert not problems, "\n".join(problems)


def test_scanner_finds_new_apis_and_accepts_fallbacks():
    names, params, _ = load_diff()
    # Real entries of the data file: a function 2.11 lacks and a parameter it lacks.
    new_fn = "torch.nn.functional.linear_cross_entropy"
    assert f"name {new_fn}".split(" ", 1)[1] in names
    new_param = next(
        p for p in sorted(params) if p.startswith("torch.nn.functional.") and "._" not in p
    )
    fn, kw = new_param[:-1].split("(")
    plain = (
        "import torch.nn.functional as F\n"
        "from torch.nn.functional import linear_cross_entropy as lce\n"
        "def f(x):\n"
        "    a = F.linear_cross_entropy(x)\n"
        f"    b = torch_alias.{fn.rsplit('.', 1)[1]}(x, {kw}=1)\n"
        "    return lce(x)\n"
    ).replace("torch_alias", "F")
    found = []
    for path, line, keywords, guarded in torch_uses(plain):
        found += [(n, line, guarded) for n in newer_than_minimum(path, keywords, names, params)]
    assert (new_fn, 2, False) in found  # the from-import itself
    assert (new_fn, 4, False) in found
    assert (new_param, 5, False) in found
    assert (new_fn, 6, False) in found
    guarded = (
        "import torch\n"
        "if hasattr(torch.nn.functional, 'linear_cross_entropy'):\n"
        "    y = torch.nn.functional.linear_cross_entropy(1)\n"
        "try:\n"
        "    from torch.nn.functional import linear_cross_entropy\n"
        "except ImportError:\n"
        "    linear_cross_entropy = None\n"
        "z = torch.randn(2)\n"
    )
    uses = torch_uses(guarded)
    newer = [u for u in uses if newer_than_minimum(u[0], u[2], names, params)]
    assert len(newer) == 2 and all(u[3] for u in newer)
    assert ("torch.randn", 8, (), False) in uses
    config = (
        "from torch._inductor import config as inductor_config\n"
        "with inductor_config.patch(freezing=True, align_random_eager=True):\n"
        "    pass\n"
    )
    ((path, line, keywords, _),) = [u for u in torch_uses(config) if u[1] == 2]
    assert newer_than_minimum(path, keywords, names, params) == [
        "torch._inductor.config.align_random_eager"
    ]


@pytest.mark.parametrize("folder", SCANNED)
def test_scanner_sees_the_library(folder):
    """The scan is not vacuous: it resolves the torch references of each scanned folder."""
    paths = {u[0] for f in (ROOT / folder).rglob("*.py") for u in torch_uses(f.read_text())}
    assert "torch.no_grad" in paths or "torch.inference_mode" in paths
    assert any(p.startswith("torch.nn.functional.") for p in paths)


def test_a_planted_new_api_use_is_reported_with_its_place(tmp_path):
    (tmp_path / "sgm").mkdir()
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "sgm" / "m.py").write_text(
        "import torch\n\n\ndef f(a, b):\n    return torch.nn.functional.linear_cross_entropy(a, b)\n"
    )
    (tmp_path / "benchmarks" / "ok.py").write_text(
        "import torch\n\ntry:\n    f = torch.nn.functional.linear_cross_entropy\n"
        "except AttributeError:\n    f = None\n"
    )
    assert unguarded_new_uses(tmp_path) == [
        "sgm/m.py:5: torch.nn.functional.linear_cross_entropy is newer than torch 2.11"
    ]
