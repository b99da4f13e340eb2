"""Every command line refuses bad input the same way: exit 2, one line naming the culprit,
no traceback, nothing written.

Each row runs a script as a subprocess in an empty working folder holding only the
materials below; bad input must be refused before any model is built, so a row takes
about a second (two where a device or a checkpoint is checked, which imports torch).

To cover a new command line, add rows to ``ROWS``: ``(script, kind, argv, culprit)``.
``argv`` and ``culprit`` may use the placeholders of ``_materials`` (``{file}``: an
existing regular file, ``{missing}``: a path that does not exist, ``{image}``: a small
PNG, ``{frames}``: a folder of PNG frames,
``{config}``: a tiny training config, ...). ``kind`` is one of ``KINDS``; every
script should have a row of each kind its flags allow.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
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

ROWS: list[tuple[str, str, list[str], str]] = [
    # ---------------------------------------------------------------- main.py
    (MAIN, "missing path", ["--base", "{missing}.yaml"], "{missing}.yaml"),
    (MAIN, "missing path", ["--resume", "{missing}"], "{missing}"),
    (MAIN, "missing path", ["--resume_from_checkpoint", "{missing}.ckpt"], "{missing}.ckpt"),
    (MAIN, "wrong type", ["--max_steps", "abc"], "--max_steps"),
    (MAIN, "wrong type", ["--seed", "x"], "--seed"),
    (
        MAIN,
        "wrong type",
        [
            "--base",
            "{config}",
            "--logdir",
            "logs",
            "model.params.network_config.params.num_res_blocks=two",
        ],
        "num_res_blocks=two",
    ),
    (
        MAIN,
        "wrong type",
        ["--base", "{config}", "--logdir", "logs", "model.params.use_ema", "true"],
        "model.params.use_ema",
    ),
    (MAIN, "out of range", ["--max_steps", "-5"], "--max_steps"),
    (MAIN, "out of range", ["--accumulate_grad_batches", "0"], "--accumulate_grad_batches"),
    (
        MAIN,
        "out of range",
        ["--base", "{config}", "--logdir", "logs", "lightning.trainer.max_steps=-5"],
        "lightning.trainer.max_steps",
    ),
    (MAIN, "unknown flag", ["--max_step", "5"], "--max_step"),
    (
        MAIN,
        "unknown flag",
        ["--base", "{config}", "--logdir", "logs", "modle.params.use_ema=true"],
        "'modle'",
    ),
    (
        MAIN,
        "unknown flag",
        ["--base", "{config}", "--logdir", "logs", "model.params.bogus_key=1"],
        "bogus_key",
    ),
    (MAIN, "file as folder", ["--base", "{config}", "--logdir", "{file}"], "{file}"),
    (MAIN, "unavailable device", ["--base", "{config}", "--accelerator", "gpu"], "--accelerator"),
    (
        MAIN,
        "unavailable device",
        ["--base", "{config}", "--logdir", "logs", "lightning.trainer.accelerator=cuda"],
        "accelerator",
    ),
    (MAIN, "bad config", ["--base", "{list_yaml}"], "{list_yaml}"),
    (MAIN, "bad config", ["--base", "{bad_yaml}"], "{bad_yaml}"),
    (MAIN, "bad checkpoint", ["--resume", "{run}/truncated"], "truncated or corrupt"),
    (MAIN, "bad checkpoint", ["--resume", "{run}/random"], "truncated or corrupt"),
    (MAIN, "bad checkpoint", ["--resume", "{run}/bare"], "weights only"),
    (
        MAIN,
        "bad checkpoint",
        ["--resume", "{run}/safetensors/checkpoints/last.safetensors"],
        "weights only",
    ),
    (MAIN, "bad checkpoint", ["--resume", "{run}/code"], "arbitrary code"),
    # ---------------------------------------------------------------- lora.py
    (LORA, "missing path", ["inspect", "{missing}.safetensors"], "{missing}.safetensors"),
    (LORA, "unknown flag", ["inspekt", "{file}"], "inspekt"),
    (LORA, "bad checkpoint", ["inspect", "{file}"], "{file}"),
    (
        LORA,
        "missing path",
        ["bake", "--config", "{config}", "--ckpt", "{missing}.ckpt", "out.safetensors"],
        "{missing}.ckpt",
    ),
    # ------------------------------------------------------ cache_conditioning
    (CACHE, "missing path", ["--base", "{missing}.yaml", "--output", "cache"], "{missing}.yaml"),
    (CACHE, "bad config", ["--base", "{bad_yaml}", "--output", "cache"], "{bad_yaml}"),
    (CACHE, "file as folder", ["--base", "{config}", "--output", "{file}"], "{file}"),
    (CACHE, "out of range", ["--base", "{config}", "--output", "c", "--limit", "0"], "--limit"),
    # ------------------------------------------------------ simple_video_sample
    (VIDEO, "missing path", ["--input_path={missing}.png"], "{missing}.png"),
    (
        VIDEO,
        "missing path",
        ["--input_path={image}", "--ckpt={missing}.safetensors"],
        "{missing}.safetensors",
    ),
    (VIDEO, "missing path", ["--input_path={image}", "--config={missing}.yaml"], "{missing}.yaml"),
    (VIDEO, "missing path", ["--input_path={image}"], "checkpoints/svd.safetensors"),
    (
        VIDEO,
        "missing path",
        ["--input_path={image}", "--lora={missing}.safetensors:0.5"],
        "{missing}.safetensors",
    ),
    (VIDEO, "wrong type", ["--input_path={image}", "--num_frames=abc"], "--num_frames"),
    (VIDEO, "wrong type", ["--input_path={image}", "--num_steps=x"], "--num_steps"),
    (VIDEO, "wrong type", ["--input_path={image}", "--elevations_deg=high"], "--elevations_deg"),
    (VIDEO, "wrong type", ["--input_path={file}", "--ckpt={file}"], "{file}"),
    (VIDEO, "out of range", ["--input_path={image}", "--num_frames=0"], "--num_frames"),
    (VIDEO, "out of range", ["--input_path={image}", "--num_frames=-3"], "--num_frames"),
    (VIDEO, "out of range", ["--input_path={image}", "--num_steps=-1"], "--num_steps"),
    (
        VIDEO,
        "out of range",
        ["--input_path={image}", "--image_frame_ratio=2"],
        "--image_frame_ratio",
    ),
    (VIDEO, "out of range", ["--input_path={image}", "--version=svd_xxl"], "--version"),
    (VIDEO, "out of range", ["--input_path={image}", "--dtype=fp8"], "--dtype"),
    (VIDEO, "unknown flag", ["--input_path={image}", "--num_frame=3"], "--num_frame=3"),
    (VIDEO, "file as folder", ["--input_path={image}", "--output_folder={file}"], "{file}"),
    (VIDEO, "file as folder", ["--input_path={image}", "--output_folder={file}/below"], "{file}"),
    (VIDEO, "unavailable device", ["--input_path={image}", "--device=bogus"], "--device"),
    (VIDEO, "unavailable device", ["--input_path={image}", "--device=cuda"], "--device"),
    # ---------------------------------------------------------------- toy_demo
    (TOY, "missing path", ["--config", "{missing}.yaml"], "{missing}.yaml"),
    (TOY, "missing path", ["--checkpoint", "{missing}.ckpt"], "{missing}.ckpt"),
    (TOY, "wrong type", ["--max-steps", "abc"], "--max-steps"),
    (TOY, "wrong type", ["model.params.use_ema"], "model.params.use_ema"),
    (TOY, "out of range", ["--minutes", "-1"], "--minutes"),
    (TOY, "out of range", ["--per-class", "0"], "--per-class"),
    (TOY, "unknown flag", ["--max-step", "3"], "--max-step"),
    (TOY, "unknown flag", ["--outdir", "out", "modle.x=1"], "'modle'"),
    (TOY, "file as folder", ["--outdir", "{file}"], "{file}"),
    (TOY, "file as folder", ["--logdir", "{file}"], "{file}"),
    (TOY, "bad config", ["--config", "{list_yaml}", "--outdir", "out"], "{list_yaml}"),
    (
        TOY,
        "bad checkpoint",
        ["--checkpoint", "{run}/random/checkpoints/last.ckpt", "--outdir", "out"],
        "truncated or corrupt",
    ),
    # ------------------------------------------------- simple_video_sample_4d / 4d2
    (SV4D, "missing path", ["--input_path={missing}.mp4"], "{missing}.mp4"),
    (SV4D, "missing path", ["--input_path={frames}", "--config={missing}.yaml"], "{missing}.yaml"),
    (SV4D, "wrong type", ["--input_path={image}"], "{image}"),
    (SV4D, "wrong type", ["--input_path={frames}", "--num_steps=x"], "--num_steps"),
    (SV4D, "out of range", ["--input_path={frames}", "--img_size=100"], "--img_size"),
    (
        SV4D,
        "out of range",
        ["--input_path={frames}", "--image_frame_ratio=0"],
        "--image_frame_ratio",
    ),
    (SV4D, "unknown flag", ["--input_path={frames}", "--num_step=3"], "--num_step=3"),
    (SV4D, "file as folder", ["--input_path={frames}", "--output_folder={file}"], "{file}"),
    (SV4D, "unavailable device", ["--input_path={frames}", "--device=cuda"], "--device"),
    (SV4D2, "missing path", ["--input_path={frames}", "--config={missing}.yaml"], "{missing}.yaml"),
    (SV4D2, "wrong type", ["--input_path={frames}", "--n_frames=abc"], "--n_frames"),
    (SV4D2, "out of range", ["--input_path={frames}", "--num_steps=-2"], "--num_steps"),
    (SV4D2, "unknown flag", ["--input_path={frames}", "--n_frame=3"], "--n_frame=3"),
    (SV4D2, "file as folder", ["--input_path={frames}", "--output_folder={file}/x"], "{file}"),
    (SV4D2, "unavailable device", ["--input_path={frames}", "--device=bogus"], "--device"),
    # ---------------------------------------------------------------- data/pack_shards
    (PACK, "missing path", ["{missing}", "shards"], "{missing}"),
    (PACK, "wrong type", ["{frames}", "shards", "--max_shard_mb=abc"], "--max_shard_mb"),
    (
        PACK,
        "out of range",
        ["{frames}", "shards", "--max_samples_per_shard=0"],
        "--max_samples_per_shard",
    ),
    (PACK, "unknown flag", ["{frames}", "shards", "--max_shard=3"], "--max_shard=3"),
    (PACK, "file as folder", ["{frames}", "{file}"], "{file}"),
    (PACK, "file as folder", ["{file}", "shards"], "{file}"),
    # ---------------------------------------------------------- simple_image_sample
    (IMAGE, "missing path", ["--ckpt={missing}.safetensors"], "{missing}.safetensors"),
    (IMAGE, "missing path", [], "sd_xl_base_1.0.safetensors"),
    (IMAGE, "wrong type", ["--width=abc"], "--width"),
    (IMAGE, "out of range", ["--steps=0"], "--steps"),
    (IMAGE, "unknown flag", ["--stepz=3"], "--stepz=3"),
    (IMAGE, "file as folder", ["--output_folder={file}"], "{file}"),
    (IMAGE, "unavailable device", ["--device=cuda"], "--device"),
    # the real culprit: a file given as the checkpoints folder, a LoRA scale that is no number
    (IMAGE, "file as folder", ["--checkpoints={file}"], "{file} is a file, not a folder"),
    (IMAGE, "wrong type", ["--lora={file}:abc"], "{file}:abc: the scale 'abc' after the file"),
    (IMAGE, "out of range", ["--lora={file}:nan"], "{file}:nan: the scale must be a finite"),
    (
        VIDEO,
        "wrong type",
        ["--input_path={image}", "--lora={file}:abc"],
        "{file}:abc: the scale 'abc' after the file",
    ),
    (
        SV4D,
        "wrong type",
        ["--input_path={frames}", "--lora={file}:abc"],
        "{file}:abc: the scale 'abc' after the file",
    ),
    # ---------------------------------------------------------------- convert
    (
        CONVERT,
        "missing path",
        ["to_diffusers", "{missing}.safetensors", "out", "--config", "{config}"],
        "{missing}.safetensors",
    ),
    (CONVERT, "missing path", ["to_sgm", "{missing}", "out.safetensors"], "{missing}"),
    (CONVERT, "wrong type", ["to_sgm", "{frames}", "out.safetensors"], "model_index.json"),
    (CONVERT, "wrong type", ["to_sgm", "{diffusers}", "out.bin"], "out.bin"),
    (
        CONVERT,
        "out of range",
        ["to_diffusers", "{file}", "{frames}", "--config", "{config}"],
        "nothing is overwritten",
    ),
    (CONVERT, "unknown flag", ["to_sgm", "--bogus", "{diffusers}", "out.safetensors"], "--bogus"),
    (CONVERT, "unknown flag", ["to_onnx", "x"], "to_onnx"),
    (CONVERT, "file as folder", ["to_sgm", "{file}", "out.safetensors"], "{file}"),
    # ---------------------------------------------------------------- demo/detect
    (DETECT, "missing path", [], "PATH"),
    (DETECT, "missing path", ["{image}", "{missing}"], "{missing}"),
    (DETECT, "missing path", ["{image}", "{missing}/*.png"], "no file matches"),
    (DETECT, "unknown flag", ["--bogus", "{image}"], "--bogus"),
    # ---------------------------------------------------------------- tiny_model.py
    (TINY_MODEL, "unknown flag", ["--bogus", "--release", "sd2.1", "--out", "out"], "--bogus"),
    (TINY_MODEL, "out of range", ["--release", "sd9", "--out", "out"], "sd9"),
    (TINY_MODEL, "wrong type", ["--release", "sd2.1", "--out", "out", "--seed", "abc"], "--seed"),
    (TINY_MODEL, "file as folder", ["--release", "sd2.1", "--out", "{file}"], "{file}"),
    (TINY_MODEL, "file as folder", ["--release", "sd2.1", "--out", "{file}/tiny"], "{file}"),
    # ---------------------------------------------------------------- make_example_inputs.py
    (EXAMPLES, "unknown flag", ["--bogus"], "--bogus"),
    (EXAMPLES, "file as folder", ["--out", "{file}"], "{file}"),
    (EXAMPLES, "file as folder", ["--out", "{file}/assets"], "{file}"),
    # ------------------------------------------- demo/gradio_app (must not start serving)
    (GRADIO, "wrong type", ["--port=abc"], "--port"),
    (GRADIO, "out of range", ["--num_steps=0"], "--num_steps"),
    (GRADIO, "unknown flag", ["--portt=1"], "--portt=1"),
    (GRADIO, "unavailable device", ["--device=cuda"], "cuda"),
    (GRADIO, "file as folder", ["--outputs={file}"], "{file}"),
    (GRADIO, "file as folder", ["--outputs={file}/demo"], "{file}"),
    (GRADIO, "missing path", ["--ckpt={missing}"], "{missing}"),
    (GRADIO, "missing path", ["--checkpoints={missing}"], "{missing}"),
    (GRADIO_4D, "wrong type", ["--port=abc"], "--port"),
    (GRADIO_4D, "out of range", ["--img_size=100"], "--img_size"),
    (GRADIO_4D, "out of range", ["--sv3d_version=sv3d_x"], "--sv3d_version"),
    (GRADIO_4D, "unknown flag", ["--portt=1"], "--portt=1"),
    (GRADIO_4D, "unavailable device", ["--device=cuda"], "cuda"),
    (GRADIO_4D, "file as folder", ["--outputs={file}"], "{file}"),
    (GRADIO_4D, "missing path", ["--ckpt={missing}"], "{missing}"),
]

# Rows that only make sense on a machine without the named hardware.
NEEDS_NO_CUDA = ("--accelerator", "accelerator=cuda", "--device=cuda")
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


def _materials(tmp: Path) -> dict[str, str]:
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


@pytest.fixture(scope="module")
def materials(tmp_path_factory) -> dict[str, str]:
    return _materials(tmp_path_factory.mktemp("cli_materials"))


def _tree(folder: Path) -> dict[str, int]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size if p.is_file() else -1)
        for p in sorted(folder.rglob("*"))
    }


def _row_id(row: tuple[str, str, list[str], str]) -> str:
    script, kind, argv, _ = row
    return f"{Path(script).stem}:{kind}:{' '.join(argv)[:50]}"


def test_every_kind_is_named_and_scripts_exist():
    for script, kind, _, _ in ROWS:
        assert kind in KINDS, kind
        assert (ROOT / script).is_file(), script


def test_every_command_line_has_rows():
    scripts = {MAIN} | {
        str(p.relative_to(ROOT))
        for p in (ROOT / "scripts").rglob("*.py")
        if not p.name.startswith("_")
    }
    missing = scripts - {row[0] for row in ROWS} - set(STREAMLIT_PAGES)
    assert not missing, f"add bad-input rows for {sorted(missing)}"


@pytest.mark.parametrize("row", ROWS, ids=[_row_id(r) for r in ROWS])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(row, materials, tmp_path):
    script, kind, argv, culprit = row
    if any(marker in " ".join(argv) for marker in NEEDS_NO_CUDA) and torch.cuda.is_available():
        pytest.skip("this machine has the device the row asks for")
    argv = [a.format(**materials) for a in argv]
    culprit = culprit.format(**materials)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    watched = Path(materials["run"]).parent
    before, materials_before = _tree(cwd), _tree(watched)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("SGM_RUN_NOW", None)
    result = subprocess.run(
        [sys.executable, str(ROOT / script), *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr + result.stdout
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:"), lines[0]
    assert culprit in lines[0], (culprit, lines[0])
    assert "this must never run" not in result.stdout
    assert _tree(cwd) == before, "a refused command wrote something"
    assert _tree(watched) == materials_before, "a refused command changed its inputs"


def _run_script(script: str, argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, str(ROOT / script), *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def mismatched(tmp_path_factory, tiny_image_clip_dir):
    """(config, checkpoint, missing, unexpected): the tiny SDXL config, and a file holding
    its weights without the UNet's and with 12 foreign subtrees."""
    from builders import build_engine, save_state, tiny_image_config
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("mismatch")
    config = tiny_image_config("sdxl_base", tiny_image_clip_dir)
    OmegaConf.save(config, folder / "tiny.yaml")
    state = build_engine(config).state_dict()
    missing = [k for k in state if k.startswith("model.diffusion_model.")]
    kept = {k: v.contiguous() for k, v in state.items() if k not in missing}
    foreign = {f"foreign.part{i:02d}.weight": torch.zeros(2) for i in range(12)}
    save_file({**kept, **foreign}, str(folder / "wrong.safetensors"))
    save_state(build_engine(config), folder / "right.safetensors")
    return folder / "tiny.yaml", folder / "wrong.safetensors", len(missing), sorted(foreign)


def test_checkpoint_mismatch_report_is_shown_bounded(mismatched, tmp_path):
    # The per-prefix report follows the one-line error: the first lines, then how many more
    # (all of them with --verbose); nothing is written.
    config, wrong, n_missing, foreign = mismatched
    argv = [f"--config={config}", f"--ckpt={wrong}", "--steps=1", "--device=cpu"]
    argv += ["--output_folder=out", "--width=64", "--height=64"]
    result = _run_script(IMAGE, argv, tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and str(wrong) in errors[0] and "does not match" in errors[0], lines
    report = lines[lines.index(errors[0]) + 1 :]
    expected = [f"model.diffusion_model.*: {n_missing} missing"]
    expected += [f"{key.rsplit('.', 1)[0]}.*: 1 unexpected" for key in foreign]
    assert [line.strip() for line in report] == [*expected[:8], "... 5 more (--verbose shows all)"]
    assert all(line.startswith("  ") for line in report)
    assert not (tmp_path / "out").exists()
    verbose = _run_script(IMAGE, [*argv, "--verbose"], tmp_path)
    shown = [line.strip() for line in verbose.stderr.strip().splitlines()]
    assert verbose.returncode == 2 and shown[-len(expected) :] == expected, shown[-15:]


def test_a_checkpoint_of_another_release_is_named_before_any_build(tmp_path):
    # SD 2.1's layout (zeros, written sparsely) given to the SDXL base release: refused
    # from the file's header with the report and the releases it fits.
    import json
    import math
    import struct

    from sgm.inference import checkpoint_fit

    layouts = checkpoint_fit.stored_layouts()
    shapes = checkpoint_fit._stored_shapes(layouts["configs"]["inference/sd_2_1.yaml"]["state"])
    header, offset = {}, 0
    for key, shape in shapes.items():
        size = 2 * math.prod(shape)
        header[key] = {
            "dtype": "F16",
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path = tmp_path / "v2-1_512-ema-pruned.safetensors"
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(blob)) + blob)
        handle.truncate(8 + len(blob) + offset)
    result = _run_script(IMAGE, ["--version=sdxl_base_1.0", f"--ckpt={path}"], tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    (error,) = [line for line in lines if line.startswith("error:")]
    assert f"{path} does not match DiffusionEngine" in error, error
    assert "its keys and shapes are those of sd2.1, sd2.1_768, sd_turbo" in error, error
    assert any(line.startswith("  model.diffusion_model.*: ") for line in lines), lines
