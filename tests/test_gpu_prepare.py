"""The wheels gpu.sh carries to the lent GPU machines: right set, under 64 MiB, complete.

The machines' image (benchmarks/device_image_packages.txt) has torch 2.11, Lightning,
transformers, ... and no diffusers, omegaconf, open_clip_torch or kornia;
``gpu.sh --prepare`` fetches those (benchmarks/gpu_wheels.txt) and the project's wheel.
The prepared folder is git-ignored: the tests that read it are skipped where it is absent
(``make gpu-prepare`` makes it; that needs PyPI).
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import gpu_prepare  # noqa: E402
import image_env  # noqa: E402

PREPARED = ROOT / ".gpu-wheels"
PREPARED_HERE = ROOT / ".gpu-wheels-here"
needs_prepared = pytest.mark.skipif(
    not (PREPARED / "requirements.txt").is_file(),
    reason="no prepared folder (.gpu-wheels): make gpu-prepare",
)
# Imported only inside functions, by optional features the GPU run does not reach.
OPTIONAL = {
    "av": "video files (video-data extra)",
    "bitsandbytes": "8-bit optimisers",
    "imageio_ffmpeg": "mp4 output (video extra)",
    "imwatermark": "invisible watermark (watermark extra)",
    "pytorch_fid": "FID metric",
    "rembg": "background removal (rembg extra)",
    "sdata": "the original's data pipeline",
    "xformers": "xformers attention (xformers extra)",
}


def image() -> dict[str, str | None]:
    return gpu_prepare.read_versions(gpu_prepare.IMAGE_LIST)


def pins() -> dict[str, str]:
    return gpu_prepare.read_pins(gpu_prepare.PINS)


def test_image_list_is_the_bare_image():
    listed = image()
    assert len(listed) > 150
    assert listed["torch"] == "2.11.0" and listed["transformers"] == "5.17.0"
    for name in ("pytorch-lightning", "einops", "safetensors", "pytest", "huggingface-hub"):
        assert name in listed
    for name in ("diffusers", "omegaconf", "open-clip-torch", "kornia", "webdataset"):
        assert name not in listed


def test_pins_carry_no_image_package_and_cover_the_missing_runtime_deps():
    pinned, listed = pins(), image()
    assert not set(pinned) & set(listed)
    # Every runtime dependency of the project is either on the image or carried.
    from packaging.requirements import Requirement

    text = (ROOT / "pyproject.toml").read_text()
    deps = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
    for line in re.findall(r'"([^"]+)"', deps):
        name = image_env.normalize(Requirement(line).name)
        assert name in listed or name in pinned, f"{name}: neither on the image nor carried"


def _imports(path: Path):
    """(top-level module, module-level?) for every absolute import in the file."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    top |= {id(s) for n in tree.body if isinstance(n, (ast.If, ast.Try)) for s in n.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name.split(".")[0], id(node) in top
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0], id(node) in top


def _gpu_run_files() -> tuple[list[Path], list[Path]]:
    """(library modules, scripts and tests gpu.sh runs, with their local imports)."""
    library = [p for p in (ROOT / "sgm").rglob("*.py") if "demo" not in p.parts]
    script = (BENCH / "gpu.sh").read_text()
    run = [BENCH / name for name in sorted(set(re.findall(r"benchmarks/(\w+\.py)", script)))]
    run += [ROOT / "tests" / "conftest.py"]
    mark = re.compile(r"^\s*(@pytest\.mark\.gpu|pytestmark\b.*mark\.gpu)", re.M)
    run += [p for p in (ROOT / "tests").rglob("test_*.py") if mark.search(p.read_text())]
    seen = set(run)
    for path in run:  # local modules they import (benchmarks/_common.py, tests' siblings)
        for mod, _ in _imports(path):
            for local in (path.parent / f"{mod}.py", ROOT / "tests" / f"{mod}.py"):
                if local.is_file() and local not in seen:
                    seen.add(local)
                    run.append(local)
    return library, run


def test_everything_the_gpu_run_imports_is_on_the_image_or_carried():
    listed, pinned = image(), pins()
    dists = {
        mod: {image_env.normalize(d) for d in names}
        for mod, names in md.packages_distributions().items()
    }
    library, run = _gpu_run_files()
    assert len(run) > 8 and ROOT / "tests" / "inference" / "test_video_precision.py" in run
    local = {p.stem for p in run}
    problems = []
    for path in library + run:
        for mod, module_level in _imports(path):
            if mod in sys.stdlib_module_names or mod == "sgm" or mod in local:
                continue
            if mod in OPTIONAL and not module_level:
                continue
            names = dists.get(mod, {image_env.normalize(mod)})
            if not any(n in listed or n in pinned for n in names):
                where = "at module level" if module_level else "in a function"
                problems.append(f"{path.relative_to(ROOT)} imports {mod} {where}")
    assert not problems, "\n".join(sorted(set(problems)))


def _fake_wheel(folder: Path, name: str, version: str, requires=(), size=0, tag="py3-none-any"):
    path = folder / f"{name.replace('-', '_')}-{version}-{tag}.whl"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    meta += "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{name.replace('-', '_')}-{version}.dist-info/METADATA", meta)
        if size:
            zf.writestr("blob", os.urandom(size))  # random: stays its size when zipped
    return path


def test_check_folder_reports_each_kind_of_problem(tmp_path):
    listed = {"torch": "2.11.0", "numpy": None, "huggingface-hub": "1.33.0"}
    _fake_wheel(tmp_path, "good", "1.0", ["torch>=2.1", "numpy", "helper==2.0"])
    _fake_wheel(
        tmp_path, "helper", "2.0", ['colorama; sys_platform == "win32"', "x; extra == 'dev'"]
    )
    assert gpu_prepare.check_folder(tmp_path, listed, 64) == []

    _fake_wheel(tmp_path, "needy", "1.0", ["missing-thing", "torch>=2.12", "huggingface-hub<1"])
    _fake_wheel(tmp_path, "numpy", "2.0")
    _fake_wheel(tmp_path, "big", "1.0", size=300_000)
    problems = gpu_prepare.check_folder(tmp_path, listed, 0.25)
    text = "\n".join(problems)
    assert "needs missing-thing: neither in the image nor prepared" in text
    assert "needs torch>=2.12, but torch 2.11.0 is what it gets" in text
    assert "needs huggingface-hub<1, but huggingface-hub 1.33.0" in text
    assert "the image already has numpy" in text
    assert "over the 0.25 MiB a device call carries" in text
    assert len(problems) == 5


def test_read_pins_refuses_a_line_without_a_version(tmp_path):
    (tmp_path / "pins.txt").write_text("# c\nomegaconf==2.4.0  # why\nkornia\n")
    with pytest.raises(gpu_prepare.PrepareError, match="'kornia' is not NAME==VERSION"):
        gpu_prepare.read_pins(tmp_path / "pins.txt")


def test_stale_files_compares_the_wheel_with_the_checkout(tmp_path):
    (tmp_path / "sgm" / "sub").mkdir(parents=True)
    (tmp_path / "sgm" / "__init__.py").write_text("A = 1\n")
    (tmp_path / "sgm" / "sub" / "m.py").write_text("B = 2\n")
    wheel = tmp_path / "sgm-0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("sgm/__init__.py", "A = 1\n")
        zf.writestr("sgm/sub/m.py", "B = 3\n")
        zf.writestr("sgm/gone.py", "")
    (tmp_path / "sgm" / "new.py").write_text("")
    stale = gpu_prepare.stale_files(wheel, tmp_path)
    assert stale == ["sgm/gone.py", "sgm/new.py", "sgm/sub/m.py"]


@needs_prepared
def test_prepared_folder_fits_one_device_call_and_holds_no_image_package():
    wheels = sorted(PREPARED.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels) / 2**20
    assert size < gpu_prepare.LIMIT_MIB
    assert gpu_prepare.check_folder(PREPARED, image(), gpu_prepare.LIMIT_MIB) == []
    names = {image_env.normalize(gpu_prepare.wheel_metadata(w)["Name"]) for w in wheels}
    assert names == set(pins()) | {"sgm"}
    for wheel in wheels:
        tag = wheel.name.rsplit("-", 3)[1:]
        assert tag[0] in ("py3", "py2.py3", "cp312") or tag[1] == "abi3", wheel.name
    listed = (PREPARED / "requirements.txt").read_text().split()
    assert len(listed) == len(wheels)


@needs_prepared
@pytest.mark.slow
@pytest.mark.skipif(not PREPARED_HERE.is_dir(), reason="no .gpu-wheels-here: make gpu-prepare")
def test_cpu_smoke_in_an_environment_of_the_image_packages(tmp_path):
    """gpu.sh --cpu-smoke to the end with only the image's packages and the prepared wheels."""
    python = image_env.build(tmp_path / "env", _image_env_names())
    bare = subprocess.run(
        [str(python), "-c", "import diffusers"], capture_output=True, text=True, cwd=tmp_path
    )
    assert bare.returncode != 0 and "No module named 'diffusers'" in bare.stderr
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "OUT")}
    env["PYTHON"] = str(python)
    # Generous limits: on a shared 2-core machine under load the compiled row's C++ builds
    # alone took over 20 minutes; this checks that every step runs, not how fast.
    env["CPU_SCALE"] = "20"
    run = subprocess.run(
        ["bash", str(BENCH / "gpu.sh"), "--cpu-smoke", str(tmp_path / "results")],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=480 * 20 + 600,
    )
    summary = (tmp_path / "results" / "summary.txt").read_text()
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert re.search(r"^install: \d+ wheels from ", summary, re.M), summary
    assert "gpu tests: ok" in summary and "failed" not in summary, summary
    assert f"sgm from {ROOT / 'sgm'}" not in summary  # the installed wheel
    assert (tmp_path / "results" / "results.md").read_text().count("| CPU smoke run") == 4


def _image_env_names() -> set[str]:
    listed, extra = image_env.closure(set(image()), set(pins()))
    return listed | extra
