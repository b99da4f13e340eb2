"""Packaging: fast import, version; the wheel installed alone outside the checkout lists
and builds every release and runs every command line; thin scripts."""

import ast
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_is_fast_and_light():
    code = (
        "import time, sys; t=time.perf_counter(); import sgm; "
        "dt=time.perf_counter()-t; "
        "heavy=[m for m in ('torch','pytorch_lightning','open_clip','transformers','kornia') if m in sys.modules]; "
        "print(sgm.__version__, dt, heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    version, seconds, heavy = out.stdout.split(" ", 2)
    assert version.count(".") == 2
    assert float(seconds) < 2.0
    assert heavy.strip() == "[]"


def test_lightning_and_open_clip_import_after_sgm():
    code = "import sgm, pytorch_lightning, open_clip, torchvision; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]


COMMANDS = {  # console script: module
    "sgm-sample-image": "sample_image",
    "sgm-sample-video": "sample_video",
    "sgm-sample-4d": "sample_4d",
    "sgm-sample-4d2": "sample_4d2",
    "sgm-convert": "convert",
    "sgm-detect": "detect",
    "sgm-pack-shards": "pack_shards",
    "sgm-train": "train",
    "sgm-lora": "lora",
    "sgm-cache-conditioning": "cache_conditioning",
}

# Run from the installed wheel: every release built on the meta device from its packaged
# config through the loaders the command lines use; one JSON line per release.
BUILD_EVERY_RELEASE = """
import json, sys
import torch
from omegaconf import OmegaConf
import sgm
from sgm.inference import releases
from sgm.inference.engines import load_engine
from sgm.inference.video import load_video_model

built = {}
for release in releases.releases():
    path = releases.config_path(release)
    frames = (release.n_time * release.n_view) if release.n_time else release.num_frames
    key = (str(path), frames, release.num_steps)
    if key not in built:
        if release.kind == "image":
            engine = load_engine(OmegaConf.load(path), None, "meta", dtype="fp32", build_on="meta")
        else:
            engine = load_video_model(path, None, "meta", frames, release.num_steps)
        built[key] = engine
    engine = built[key]
    sampler = getattr(engine, "sampler", None)
    print(json.dumps({
        "name": release.name,
        "kind": release.kind,
        "config": str(path),
        "sgm": sgm.__file__,
        "keys": [e.input_key for e in engine.conditioner.embedders],
        "devices": sorted({p.device.type for p in engine.parameters()}),
        "parameters": sum(p.numel() for p in engine.parameters()),
        "steps": getattr(sampler, "num_steps", None),
        "guider_frames": getattr(getattr(sampler, "guider", None), "num_frames", None),
        "frames": frames,
    }))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel built from the checkout, installed alone into an empty folder."""
    wheels = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-w", str(wheels)],
        check=True,
    )
    (wheel,) = wheels.glob("sgm-*.whl")
    target = tmp_path_factory.mktemp("site")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True)
    return wheel, target


def _outside(target: Path, tmp_path: Path, args: list[str]) -> subprocess.CompletedProcess:
    """Run ``args`` from a folder outside the checkout, importing sgm from ``target``."""
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"}
    cwd = tmp_path / "elsewhere"
    cwd.mkdir(exist_ok=True)
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_wheel_holds_the_package_and_its_configs_once(installed):
    wheel, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    configs = [n for n in names if n.endswith(".yaml")]
    assert "sgm/util.py" in names and "sgm/commands/sample_image.py" in names
    assert all(n.startswith("sgm/configs/") for n in configs), configs
    assert len(configs) == len(set(configs))
    packaged = sorted(
        p.relative_to(ROOT).as_posix() for p in (ROOT / "sgm/configs").rglob("*.yaml")
    )
    assert sorted(configs) == packaged
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    for command, module in COMMANDS.items():
        assert f"{command} = sgm.commands.{module}:main" in text


@pytest.mark.slow
def test_installed_wheel_builds_every_release_on_meta(installed, tmp_path):
    from sgm.inference import releases

    _, target = installed
    script = tmp_path / "build_every_release.py"
    script.write_text(BUILD_EVERY_RELEASE)
    result = _outside(target, tmp_path, [sys.executable, str(script)])
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {row["name"]: row for row in map(json.loads, result.stdout.splitlines())}
    assert list(rows) == [r.name for r in releases.releases()]
    assert {r["kind"] for r in rows.values()} == {"image", "video", "sv4d"}
    for release in releases.releases():
        row = rows[release.name]
        assert Path(row["sgm"]).is_relative_to(target), row["sgm"]
        assert Path(row["config"]).is_relative_to(target / "sgm" / "configs")
        assert tuple(row["keys"]) == release.conditions_on
        assert row["devices"] == ["meta"] and row["parameters"] > 10**8
        if release.kind != "image":
            assert row["steps"] == release.num_steps
            assert row["guider_frames"] == row["frames"]


@pytest.mark.slow
def test_installed_commands_answer_help(installed, tmp_path):
    _, target = installed
    for command, module in COMMANDS.items():
        for args in (
            [str(target / "bin" / command), "--help"],
            [sys.executable, "-m", f"sgm.commands.{module}", "--help"],
        ):
            result = _outside(target, tmp_path, args)
            assert result.returncode == 0, (args, result.stderr[-2000:])
            assert "usage:" in result.stdout and "--help" in result.stdout, args


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes of a module and its classes and functions."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def test_library_reads_nothing_under_scripts():
    """No string in sgm's code (docstrings aside) is a path into ``scripts/``: an
    installed package has no such folder."""
    offenders = []
    for path in sorted((ROOT / "sgm").rglob("*.py")):
        tree = ast.parse(path.read_text())
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                parts = re.split(r"[/\\]", node.value)
                if id(node) not in docs and "scripts" in parts:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert not offenders, "sgm must not read scripts/:\n" + "\n".join(offenders)


def test_scripts_are_thin():
    """Every script under scripts/ is a parser plus calls into the library."""
    long = {}
    for path in sorted((ROOT / "scripts").rglob("*.py")):
        lines = len(path.read_text().splitlines())
        if lines > 200:
            long[str(path.relative_to(ROOT))] = lines
    assert not long, f"scripts over 200 lines: {long}"


def test_checkout_config_paths_are_the_packaged_files():
    """``configs/`` and ``scripts/sampling/configs/`` are links to sgm/configs, not copies."""
    packaged = ROOT / "sgm" / "configs"
    assert (ROOT / "configs").resolve() == packaged
    assert (ROOT / "scripts/sampling/configs").resolve() == packaged / "sampling"
    assert (ROOT / "scripts/sampling/configs/svd.yaml").is_file()
    assert (ROOT / "configs/inference/sd_xl_base.yaml").is_file()


def test_library_has_no_hard_coded_cuda_device():
    import re

    # Placing work on CUDA by name; comparing a device's type with "cuda" is fine.
    pattern = re.compile(
        r"""(device\s*=\s*|\.to\(\s*|torch\.device\(\s*)["']cuda(:\d+)?["']|\.cuda\("""
    )
    offenders = []
    for path in (ROOT / "sgm").rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line.split("#", 1)[0]):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "devices must come from the caller:\n" + "\n".join(offenders)
