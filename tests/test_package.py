"""Packaging: fast import, version, wheel contents."""

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


@pytest.mark.slow
def test_wheel_contains_configs(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        check=True,
    )
    (wheel,) = tmp_path.glob("sgm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("sgm/configs/") for n in names)
    assert "sgm/util.py" in names


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
