"""The torch names and parameters newer than the oldest supported torch (for a test).

    python benchmarks/torch_api_diff.py [--minimum 2.11.0] [--out FILE]

Reads the Python sources and type stubs of two torch releases without importing either:
the installed torch, and the minimum's wheel, fetched with `pip download` for whatever
platform has the smallest wheel (the sources are the same on every platform). Every
module, top-level name, class member and function parameter is listed for each; what
the installed release has and the minimum lacks is written, gzipped, to FILE (default
tests/fixtures/torch_api_since_<minimum>.txt.gz) as lines 'name DOTTED' and
'param DOTTED(ARG)'. tests/test_torch_minimum.py fails when the library or a benchmark
uses one of them without a fallback.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Functions defined in these stubs are bound on the module named here at import time.
REBOUND = {"torch._C._VariableFunctions": "torch", "torch._C.TensorBase": "torch.Tensor"}


def module_name(rel: Path) -> str:
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _add(node: ast.AST, prefix: str, names: set[str], params: set[str]) -> None:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        names.add(f"{prefix}.{node.name}")
        a = node.args
        for arg in a.posonlyargs + a.args + a.kwonlyargs:
            params.add(f"{prefix}.{node.name}({arg.arg})")
        if a.kwarg:
            params.add(f"{prefix}.{node.name}(**)")
    elif isinstance(node, ast.ClassDef):
        names.add(f"{prefix}.{node.name}")
        for sub in node.body:
            _add(sub, f"{prefix}.{node.name}", names, params)
    elif isinstance(node, (ast.Assign, ast.AnnAssign)):
        for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
            for n in ast.walk(target):
                if isinstance(n, ast.Name):
                    names.add(f"{prefix}.{n.id}")
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
        for alias in node.names:
            if alias.name != "*":
                names.add(f"{prefix}.{(alias.asname or alias.name).split('.')[0]}")
    elif isinstance(node, (ast.If, ast.Try, ast.With)):
        body = list(node.body) + list(getattr(node, "orelse", []))
        body += [s for h in getattr(node, "handlers", []) for s in h.body]
        for sub in body:
            _add(sub, prefix, names, params)


def api(site: Path) -> tuple[set[str], set[str]]:
    """(names, parameters) of the torch package under `site`."""
    names: set[str] = set()
    params: set[str] = set()
    for path in sorted((site / "torch").rglob("*.py*")):
        if path.suffix not in (".py", ".pyi"):
            continue
        mod = module_name(path.relative_to(site))
        try:
            tree = ast.parse(path.read_text(errors="replace"))
        except SyntaxError:
            continue
        names.add(mod)
        for node in tree.body:
            _add(node, mod, names, params)
    for src, dst in REBOUND.items():
        names |= {dst + n[len(src) :] for n in names if n.startswith(src + ".")}
        params |= {dst + p[len(src) :] for p in params if p.startswith(src + ".")}
    return names, params


def fetch_sources(version: str, dest: Path) -> Path:
    """Unpack torch==`version`'s Python files from its (small) macOS wheel into `dest`."""
    subprocess.run(
        [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--platform", "macosx_11_0_arm64", "--python-version", "3.11",
            "-d", str(dest), f"torch=={version}",
        ],
        check=True,
    )  # fmt: skip
    (wheel,) = dest.glob("torch-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        for member in zf.namelist():
            if member.startswith("torch/") and member.endswith((".py", ".pyi")):
                zf.extract(member, dest / "site")
    return dest / "site"


def main(argv=None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minimum", default="2.11.0")
    p.add_argument("--sources", type=Path, help="an unpacked minimum torch (skips the download)")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    short = ".".join(args.minimum.split(".")[:2]).replace(".", "_")
    out = args.out or ROOT / "tests" / "fixtures" / f"torch_api_since_{short}.txt.gz"
    installed = Path(torch.__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        old_site = args.sources or fetch_sources(args.minimum, Path(tmp))
        old_names, old_params = api(old_site)
    new_names, new_params = api(installed)
    current = torch.__version__.split("+")[0]
    lines = [f"# torch {current} names and parameters absent from torch {args.minimum}"]
    lines += [f"name {n}" for n in sorted(new_names - old_names)]
    lines += [f"param {q}" for q in sorted(new_params - old_params)]
    out.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode(), 9, mtime=0))
    print(f"{out}: {len(lines) - 1} entries")
    return 0


if __name__ == "__main__":
    sys.exit(main())
