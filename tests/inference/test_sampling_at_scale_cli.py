"""The image and video command lines at scale: the image script under ``torchrun
--nproc_per_node 2`` (gloo) writes the bytes of a one-process run, with a manifest; the
bad inputs of a run at scale are one line and exit status 2 before any model loads; the
video script over a glob of inputs, resumed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sgm.commands import sample_image, sample_video

ROOT = Path(__file__).resolve().parents[2]
IMAGE_SCRIPT = ROOT / "scripts" / "sampling" / "simple_image_sample.py"


@pytest.fixture(scope="module")
def sd21(tmp_path_factory, tiny_image_clip_dir):
    """(checkpoints folder, config) of a tiny SD 2.1 under its released file name."""
    from builders import write_tiny_model

    folder = tmp_path_factory.mktemp("at_scale") / "checkpoints"
    config, _ = write_tiny_model(
        "sd_2_1", tiny_image_clip_dir, folder, "v2-1_512-ema-pruned.safetensors"
    )
    turbo = folder / "sd_turbo.safetensors"
    os.link(folder / "v2-1_512-ema-pruned.safetensors", turbo)
    return folder, config


def _prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.txt"
    lines = ["a red fox", json.dumps({"prompt": "a tall ship", "seed": 5}), "a bowl of ramen"]
    path.write_text("\n".join(lines) + "\n")
    return path


def _image_args(sd21, out: Path, *extra: str, version: str = "sd2.1") -> list[str]:
    folder, config = sd21
    return [
        "--version",
        version,
        "--config",
        str(config),
        "--checkpoints",
        str(folder),
        "--output_folder",
        str(out),
        "--device",
        "cpu",
        "--dtype",
        "fp32",
        "--width",
        "64",
        "--height",
        "64",
        *extra,
    ]


def _pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


@pytest.mark.slow
def test_image_script_under_torchrun_matches_one_process(sd21, tmp_path):
    prompts = _prompts(tmp_path)
    common = ["--prompts_file", str(prompts), "--steps", "2", "--seed", "10"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    runs = {}
    for name, processes in (("two", 2), ("one", 1)):
        runs[name] = run = subprocess.run(
            [
                *torchrun,
                f"--nproc_per_node={processes}",
                str(IMAGE_SCRIPT),
                *_image_args(sd21, tmp_path / name, *common),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert run.returncode == 0, run.stderr[-3000:]
    made = _pngs(tmp_path / "two")
    assert list(made) == ["000000000.png", "000000001.png", "000000002.png"]
    assert made == _pngs(tmp_path / "one")
    records = [
        json.loads(x) for x in (tmp_path / "two" / "manifest.jsonl").read_text().splitlines()
    ]
    assert [(r["index"], r["prompt"], r["seed"]) for r in records] == [
        (0, "a red fox", 10),
        (1, "a tall ship", 5),
        (2, "a bowl of ramen", 12),
    ]
    assert records[0]["params"]["steps"] == "2" and records[0]["params"]["model"] == "sd2.1"
    # every rank printed the files it wrote
    printed = sorted(
        Path(line).name for line in runs["two"].stdout.split() if line.endswith(".png")
    )
    assert printed == list(made)


def _main(module, argv, capsys):
    code = module.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.mark.parametrize(
    "env, extra, version, culprit",
    [
        ({"RANK": "0", "WORLD_SIZE": "3"}, ["--cfg_parallel"], "sd2.1", "world size 3 is odd"),
        (
            {"RANK": "1", "WORLD_SIZE": "2"},
            ["--cfg_parallel", "--steps", "1"],
            "sd_turbo",
            "without guidance",
        ),
    ],
)
def test_cfg_parallel_refusals_before_loading(
    sd21, tmp_path, capsys, monkeypatch, env, extra, version, culprit
):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code, err = _main(
        sample_image,
        _image_args(sd21, tmp_path / "o", "--prompt", "x", *extra, version=version),
        capsys,
    )
    assert code == 2 and len(err) == 1 and culprit in err[0]
    assert not (tmp_path / "o").exists()


def test_bad_prompts_file_names_the_line(sd21, tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b'a fox\n{"prompt": "x",\n')
    code, err = _main(
        sample_image, _image_args(sd21, tmp_path / "o", "--prompts_file", str(bad)), capsys
    )
    assert code == 2 and len(err) == 1 and "bad.txt, line 2: malformed JSON" in err[0]
    bad.write_bytes(b"ok\n\xfe\xff\n")
    code, err = _main(
        sample_image, _image_args(sd21, tmp_path / "o", "--prompts_file", str(bad)), capsys
    )
    assert code == 2 and "line 2: not UTF-8" in err[0]


@pytest.mark.slow
def test_image_resume_and_changed_parameter(sd21, tmp_path, capsys):
    """One process: a run, a rerun that makes nothing, a deleted file made again with
    the same bytes, a changed --steps refused naming it (until --overwrite)."""
    out = tmp_path / "out"
    args = _image_args(sd21, out, "--prompts_file", str(_prompts(tmp_path)), "--steps", "2")
    assert sample_image.main(args) == 0
    capsys.readouterr()
    first = _pngs(out)
    (out / "000000001.png").unlink()
    assert sample_image.main(args) == 0
    assert capsys.readouterr().out.split() == [str(out / "000000001.png")]
    assert _pngs(out) == first
    code, err = _main(sample_image, [*args[:-1], "3"], capsys)
    assert (
        code == 2 and len(err) == 1 and "written with steps='2'" in err[0] and "steps='3'" in err[0]
    )
    assert sample_image.main([*args[:-1], "3", "--overwrite"]) == 0
    records = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert {r["params"]["steps"] for r in records} == {"3"}


@pytest.fixture(scope="module")
def svd(video_arch_dir, tmp_path_factory):
    """A tiny SVD checkpoint and config."""
    import torch
    from builders import CONFIGS, save_state

    from sgm.inference.video import load_video_model

    torch.manual_seed(0)
    model = load_video_model(
        CONFIGS / "video_tiny_svd.yaml", None, "cpu", num_frames=3, num_steps=2
    )
    ckpt = save_state(model, tmp_path_factory.mktemp("svd") / "tiny.safetensors")
    return CONFIGS / "video_tiny_svd.yaml", ckpt


@pytest.mark.slow
def test_video_script_over_a_glob_resumes(svd, tmp_path, capsys):
    from PIL import Image

    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(2):
        pixels = np.random.RandomState(i).randint(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(inputs / f"v{i}.png")
    out = tmp_path / "out"
    args = [
        f"--input_path={inputs}/*.png",
        f"--config={svd[0]}",
        f"--ckpt={svd[1]}",
        "--num_frames=3",
        "--num_steps=2",
        "--decoding_t=2",
        "--device=cpu",
        "--dtype=fp32",
        f"--output_folder={out}",
    ]
    assert sample_video.main(args) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(out / "000000000.mp4"), str(out / "000000001.mp4")]
    records = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(r["input"], r["seed"]) for r in records] == [
        (str(inputs / "v0.png"), 23),
        (str(inputs / "v1.png"), 24),
    ]
    first = (out / "000000001.mp4").read_bytes()
    (out / "000000001.mp4").unlink()
    assert sample_video.main(args) == 0
    assert capsys.readouterr().out.split() == [str(out / "000000001.mp4")]
    assert (out / "000000001.mp4").read_bytes() == first
