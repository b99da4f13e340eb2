"""Every command line refuses bad input the same way: exit 2, one line naming the culprit,
no traceback, nothing written (the contract and its runner: ``cli_contract_support.py``).

To cover a new command line, add rows to ``ROWS``: ``(script, kind, argv, culprit)``;
``kind`` is one of ``KINDS``; every script should have a row of each kind its flags allow.
The adversarial classes (non-finite numbers, huge images, symlinks, code pickles, ...)
have their own modules under ``tests/bad_input/``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_contract_support import (
    CACHE,
    CONVERT,
    DETECT,
    EXAMPLES,
    GRADIO,
    GRADIO_4D,
    IMAGE,
    KINDS,
    LORA,
    MAIN,
    PACK,
    ROOT,
    STREAMLIT_PAGES,
    SV4D,
    SV4D2,
    TINY_MODEL,
    TOY,
    VIDEO,
    check_row,
    make_materials,
    row_id,
)

ZERO2 = ROOT / "sgm/configs/example_training/finetune/deepspeed_zero2.yaml"

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
    (
        MAIN,
        "unavailable device",
        ["--base", "{config}", str(ZERO2), "--logdir", "logs"],
        "deepspeed_zero needs",
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


@pytest.fixture(scope="module")
def materials(tmp_path_factory) -> dict[str, str]:
    return make_materials(tmp_path_factory.mktemp("cli_materials"))


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


@pytest.mark.parametrize("row", ROWS, ids=[row_id(r) for r in ROWS])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(row, materials, tmp_path):
    check_row(row, materials, tmp_path / "cwd")


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
