"""The bad-input contract every command line keeps: exit 2, one line naming the culprit,
no traceback, nothing written.

A row is ``(script, kind, argv, culprit)``. It runs the script as a subprocess in an
empty working folder; ``argv`` and ``culprit`` may use the placeholders of
``make_materials`` (``{file}``: an existing regular file, ``{missing}``: a path that does
not exist, ``{image}``: a small PNG, ``{frames}``: a folder of PNG frames, ``{config}``:
a tiny training config, ...) and of any extra materials a test module adds. Bad input
must be refused before any model is built, so a row takes about a second (two where a
device or a checkpoint is checked, which imports torch).

``tests/test_cli_contract.py`` holds the rows for the first kinds; the modules under
``tests/bad_input/`` hold one class of adversarial input each.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "configs" / "tiny_train.yaml"

KINDS = (
    "missing path",
    "wrong type",
    "out of range",
    "unknown flag",
    "file as folder",
    "unavailable device",
    "bad config",
    "bad checkpoint",
    # the adversarial classes (tests/bad_input/)
    "not finite",
    "beyond backend",
    "huge image",
    "symlink",
    "folder replaced",
    "truncated in folder",
    "code pickle",
    "not text",
    "bad shard",
    "real cause",
)

MAIN = "main.py"
VIDEO = "scripts/sampling/simple_video_sample.py"
TOY = "scripts/demo/toy_demo.py"
SV4D = "scripts/sampling/simple_video_sample_4d.py"
SV4D2 = "scripts/sampling/simple_video_sample_4d2.py"
PACK = "scripts/data/pack_shards.py"
IMAGE = "scripts/sampling/simple_image_sample.py"
CONVERT = "scripts/convert.py"
DETECT = "scripts/demo/detect.py"
GRADIO = "scripts/demo/gradio_app.py"
GRADIO_4D = "scripts/demo/gradio_app_sv4d.py"
LORA = "scripts/lora.py"
CACHE = "scripts/data/cache_conditioning.py"
TINY_MODEL = "scripts/tiny_model.py"
EXAMPLES = "scripts/make_example_inputs.py"

# Rows that only make sense on a machine without the named hardware.
NEEDS_NO_CUDA = ("--accelerator", "accelerator=cuda", "--device=cuda", "deepspeed_zero")
# Streamlit pages show bad input in the page rather than exiting; their page tests cover it.
STREAMLIT_PAGES = (
    "scripts/demo/sampling.py",
    "scripts/demo/video_sampling.py",
    "scripts/demo/turbo.py",
)


class _Code:
    def __reduce__(self):
        return (print, ("this must never run",))


def _save_run(folder: Path, write) -> None:
    (folder / "configs").mkdir(parents=True)
    shutil.copy(TINY, folder / "configs" / "2000-01-01T00-00-00-project.yaml")
    (folder / "checkpoints").mkdir()
    write(folder / "checkpoints")


def make_materials(tmp: Path) -> dict[str, str]:
    """Files the rows refer to, made once per test module (outside each row's cwd)."""
    from PIL import Image
    from safetensors.torch import save_file

    (tmp / "taken.txt").write_text("a file, not a folder\n")
    Image.new("RGB", (70, 100), (120, 30, 200)).save(tmp / "input.png")
    (tmp / "frames").mkdir()
    (tmp / "diffusers").mkdir()
    (tmp / "diffusers" / "model_index.json").write_text("{}\n")
    for i in range(3):
        Image.new("RGB", (64, 64), (40 * i, 90, 200)).save(tmp / "frames" / f"{i:03d}.png")
    (tmp / "list.yaml").write_text("- model: {}\n- data: {}\n")
    (tmp / "bad.yaml").write_text("model: [1, 2\n")
    weights = {"model.diffusion_model.out.weight": torch.ones(2, 2)}
    full = {"state_dict": weights, "optimizer_states": [{}], "loops": {}, "global_step": 3}
    run = tmp / "runs"

    def truncated(ckpts: Path) -> None:
        torch.save(full, ckpts / "last.ckpt")
        data = (ckpts / "last.ckpt").read_bytes()
        (ckpts / "last.ckpt").write_bytes(data[: len(data) // 2])

    _save_run(run / "truncated", truncated)
    _save_run(run / "random", lambda c: (c / "last.ckpt").write_bytes(os.urandom(4096)))
    _save_run(run / "bare", lambda c: torch.save({"state_dict": weights}, c / "last.ckpt"))
    _save_run(run / "safetensors", lambda c: save_file(weights, str(c / "last.safetensors")))
    _save_run(run / "code", lambda c: torch.save({**full, "payload": _Code()}, c / "last.ckpt"))
    return {
        "file": str(tmp / "taken.txt"),
        "missing": str(tmp / "absent" / "nothing"),
        "image": str(tmp / "input.png"),
        "frames": str(tmp / "frames"),
        "config": str(TINY),
        "diffusers": str(tmp / "diffusers"),
        "list_yaml": str(tmp / "list.yaml"),
        "bad_yaml": str(tmp / "bad.yaml"),
        "run": str(run),
    }


def _tree(folder: Path) -> dict[str, int]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size if p.is_file() else -1)
        for p in sorted(folder.rglob("*"))
    }


def row_id(row: tuple[str, str, list[str], str]) -> str:
    script, kind, argv, _ = row
    return f"{Path(script).stem}:{kind}:{' '.join(argv)[:50]}"


class _RowServer:
    """``tests/cli_row_server.py``, started once: it imports torch and sgm, then forks a
    child per script run (a second instead of two per row). ``SGM_ROWS_SUBPROCESS=1``,
    or a platform without ``fork``, runs each row as its own process instead."""

    process: subprocess.Popen | None = None

    @classmethod
    def run(cls, script: str, argv: list[str], cwd: Path, env: dict) -> dict:
        import json

        if cls.process is None or cls.process.poll() is not None:
            cls.process = subprocess.Popen(
                [sys.executable, str(ROOT / "tests" / "cli_row_server.py")],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
        request = {"script": script, "argv": argv, "cwd": str(cwd), "env": env, "timeout": 120}
        cls.process.stdin.write(json.dumps(request) + "\n")
        cls.process.stdin.flush()
        return json.loads(cls.process.stdout.readline())


def run_script(script: str, argv: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    """``python SCRIPT ARGV`` in ``cwd`` with ``env``: its exit status and output."""
    if sys.platform == "linux" and os.environ.get("SGM_ROWS_SUBPROCESS") != "1":
        done = _RowServer.run(script, argv, cwd, env)
        return subprocess.CompletedProcess(
            [script, *argv], done["returncode"], done["stdout"], done["stderr"]
        )
    return subprocess.run(
        [sys.executable, script, *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def check_row(row: tuple[str, str, list[str], str], materials: dict[str, str], cwd: Path) -> None:
    """Run one row in the empty folder ``cwd`` and assert the contract."""
    import pytest

    script, kind, argv, culprit = row
    assert kind in KINDS, kind
    if any(marker in " ".join(argv) for marker in NEEDS_NO_CUDA) and torch.cuda.is_available():
        pytest.skip("this machine has the device the row asks for")
    argv = [a.format(**materials) for a in argv]
    culprit = culprit.format(**materials)
    cwd.mkdir(exist_ok=True)
    watched = Path(materials["run"]).parent
    before, materials_before = _tree(cwd), _tree(watched)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("SGM_RUN_NOW", None)
    result = run_script(str(ROOT / script), argv, cwd, env)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr + result.stdout
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:"), lines[0]
    assert culprit in lines[0], (culprit, lines[0])
    assert "this must never run" not in result.stdout
    assert _tree(cwd) == before, "a refused command wrote something"
    assert _tree(watched) == materials_before, "a refused command changed its inputs"
