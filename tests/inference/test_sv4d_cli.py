"""SV4D / SV4D 2.0 command lines end to end on CPU with toy engines of the releases'
structure (random weights saved under the released file names), the original's flags,
and every kind of bad input: one line, exit 2, nothing written."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import save_state

from sgm.inference import sv4d_cli

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts" / "sampling"
CONFIGS = REPO / "tests" / "configs"
RELEASES = ("sv4d", "sv4d2", "sv4d2_8views", "sv3d_u")

# the original scripts' flags (Fire parameters)
SV4D_FLAGS = (
    "input_path",
    "output_folder",
    "num_steps",
    "sv3d_version",
    "img_size",
    "fps_id",
    "motion_bucket_id",
    "cond_aug",
    "seed",
    "encoding_t",
    "decoding_t",
    "device",
    "elevations_deg",
    "azimuths_deg",
    "image_frame_ratio",
    "verbose",
    "remove_bg",
)
SV4D2_FLAGS = (
    "input_path",
    "model_path",
    "output_folder",
    "num_steps",
    "img_size",
    "n_frames",
    "seed",
    "encoding_t",
    "decoding_t",
    "device",
    "elevations_deg",
    "azimuths_deg",
    "image_frame_ratio",
    "verbose",
    "remove_bg",
)


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"_test_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SV4D = _script("simple_video_sample_4d")
SV4D2 = _script("simple_video_sample_4d2")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, video_arch_dir):
    """A folder holding checkpoints/<release>.safetensors (random weights, toy sizes)
    and an 8-frame gif of an object on white; the toy CLIP arch is registered."""
    from PIL import Image, ImageDraw

    from sgm.inference.video import load_video_model

    root = tmp_path_factory.mktemp("sv4d_work")
    (root / "checkpoints").mkdir()
    for name in RELEASES:
        torch.manual_seed(0)
        frames = 21 if name.startswith("sv3d") else None
        model = load_video_model(CONFIGS / f"{name}_tiny.yaml", None, "cpu", frames)
        save_state(model, root / "checkpoints" / f"{name}.safetensors")
    frames = []
    for i in range(8):
        frame = Image.new("RGB", (96, 80), "white")
        ImageDraw.Draw(frame).ellipse((30 + 2 * i, 20, 60 + 2 * i, 56), fill=(200, 30, 40))
        frames.append(frame)
    frames[0].save(root / "clip.gif", save_all=True, append_images=frames[1:], duration=100)
    return root


def _main(module, argv, cwd: Path, monkeypatch, capsys):
    monkeypatch.chdir(cwd)
    try:
        code = module.main([str(a) for a in argv])
    except SystemExit as exit_info:  # argparse's errors
        code = exit_info.code
    out, err = capsys.readouterr()
    return code, out, err


def _ffmpeg(path: Path) -> np.ndarray:
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    assert meta["codec"] == "h264" and meta["fps"] == pytest.approx(10.0)
    return np.stack([np.frombuffer(f, np.uint8).reshape(height, width, 3) for f in reader])


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sv4d_end_to_end_views_diagonal_and_same_seed(workdir, monkeypatch, capsys):
    args = [
        "--input_path=clip.gif",
        f"--config={CONFIGS / 'sv4d_tiny.yaml'}",
        f"--sv3d_config={CONFIGS / 'sv3d_u_tiny.yaml'}",
        "--img_size=64",
        "--num_steps=1",
        "--device=cpu",
        "--output_folder=out4d",
        "--decoding_t=7",
    ]
    code, out, err = _main(SV4D, args, workdir, monkeypatch, capsys)
    assert code == 0, err
    folder = workdir / "out4d"
    names = sorted(p.name for p in folder.iterdir())
    expected = sorted(
        ["000000_process_input.mp4", "000000_t000.mp4", "000000_diag.mp4"]
        + [f"000000_v{v:03d}.mp4" for v in range(1, 9)]
    )
    assert names == expected
    assert out.split() == [
        str(Path("out4d") / n)
        for n in [
            "000000_process_input.mp4",
            "000000_t000.mp4",
            *[f"000000_v{v:03d}.mp4" for v in range(1, 9)],
            "000000_diag.mp4",
        ]
    ]
    for name in names:
        frames = _ffmpeg(folder / name)
        assert frames.shape == ((9 if "t000" in name else 21), 64, 64, 3), name
    # view 0 of the diagonal video is the processed input (frames 0 and 1)
    diag = _ffmpeg(folder / "000000_diag.mp4")
    source = _ffmpeg(folder / "000000_process_input.mp4")
    assert np.abs(diag[:2].astype(int) - source[:2].astype(int)).mean() < 3

    code, _, err = _main(SV4D, args, workdir, monkeypatch, capsys)
    assert code == 0, err
    assert len(list(folder.iterdir())) == 22
    for name in names:
        assert _digest(folder / name) == _digest(folder / name.replace("000000", "000001"))


def test_sv4d_frame_0_video_holds_sv3d_views(workdir, tmp_path, monkeypatch, capsys):
    """The *_t000 video is the input frame and SV3D's views of it, exactly as the SV3D pass
    made them, not frame 0 of the grid after the dense windows resampled its views."""
    from sgm.inference import sv4d, sv4d_job

    seen = {}
    sv3d_reference, sample_sv4d = sv4d.sv3d_reference, sv4d.sample_sv4d

    def spy_reference(model, image, *args, **kwargs):
        seen["input"] = image.clone()
        seen["reference"] = sv3d_reference(model, image, *args, **kwargs).clone()
        return seen["reference"]

    def spy_grid(*args, **kwargs):
        seen["grid"] = sample_sv4d(*args, **kwargs)
        return seen["grid"]

    def keep_videos(folder, videos, per_run):
        seen["videos"] = videos
        return []

    monkeypatch.setattr(sv4d, "sv3d_reference", spy_reference)
    monkeypatch.setattr(sv4d, "sample_sv4d", spy_grid)
    monkeypatch.setattr(sv4d_job, "write_videos", keep_videos)
    args = [
        f"--input_path={workdir / 'clip.gif'}",
        f"--config={CONFIGS / 'sv4d_tiny.yaml'}",
        f"--sv3d_config={CONFIGS / 'sv3d_u_tiny.yaml'}",
        "--img_size=64",
        "--num_steps=1",
        "--device=cpu",
        f"--output_folder={tmp_path / 'unused'}",
    ]
    code, _, err = _main(SV4D, args, workdir, monkeypatch, capsys)
    assert code == 0, err
    views = [seen["input"]] + [seen["reference"][v] for v in sv4d.SV4D_SUBSAMPLED_VIEWS[1:]]
    expected = ((torch.stack(views).float() + 1) / 2).clamp(0, 1)
    assert torch.equal(seen["videos"]["_t000.mp4"], expected)
    after_windows = ((torch.stack(seen["grid"][0]) + 1) / 2).clamp(0, 1)
    assert not torch.equal(after_windows[1:], expected[1:])  # the windows did change them


@pytest.mark.parametrize("release,views", [("sv4d2", 4), ("sv4d2_8views", 8)])
def test_sv4d2_end_to_end_views_and_same_seed(workdir, monkeypatch, capsys, release, views):
    args = [
        "--input_path=clip.gif",
        f"--model_path=checkpoints/{release}.safetensors",
        f"--config={CONFIGS / f'{release}_tiny.yaml'}",
        "--img_size=64",
        "--num_steps=1",
        "--device=cpu",
        "--output_folder=out4d2",
        "--n_frames=13",
    ]
    code, out, err = _main(SV4D2, args, workdir, monkeypatch, capsys)
    assert code == 0, err
    folder = workdir / "out4d2" / release
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(
        ["000000_process_input.mp4"] + [f"000000_v{v:03d}.mp4" for v in range(1, views + 1)]
    )
    for name in names:
        assert _ffmpeg(folder / name).shape == (13, 64, 64, 3)
    if release == "sv4d2":  # same seed, same bytes; --low_vram only moves modules around
        code, _, err = _main(SV4D2, args + ["--low_vram"], workdir, monkeypatch, capsys)
        assert code == 0, err
        for name in names:
            assert _digest(folder / name) == _digest(folder / name.replace("000000", "000001"))


@pytest.mark.parametrize("module,flags", [(SV4D, SV4D_FLAGS), (SV4D2, SV4D2_FLAGS)])
def test_help_lists_the_original_flags(module, flags, capsys):
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in flags + ("ckpt", "config", "dtype", "low_vram", "lora"):
        assert f"--{flag}" in text, flag


def _bad(module, argv, cwd, monkeypatch, capsys, *needles):
    before = sorted(p.name for p in cwd.iterdir())
    code, out, err = _main(module, argv, cwd, monkeypatch, capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert sorted(p.name for p in cwd.iterdir()) == before  # nothing written
    return lines[0]


@pytest.fixture
def scratch(workdir, tmp_path):
    """An empty working folder with links to the shared checkpoints and clip."""
    (tmp_path / "checkpoints").symlink_to(workdir / "checkpoints")
    (tmp_path / "clip.gif").symlink_to(workdir / "clip.gif")
    return tmp_path


def test_bad_input_paths(scratch, monkeypatch, capsys):
    (scratch / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    (scratch / "empty").mkdir()
    tiny4d2 = f"--config={CONFIGS / 'sv4d2_tiny.yaml'}"
    _bad(SV4D2, ["--input_path=missing.gif", tiny4d2], scratch, monkeypatch, capsys, "missing.gif")
    _bad(
        SV4D2,
        ["--input_path=broken.mp4", tiny4d2],
        scratch,
        monkeypatch,
        capsys,
        "broken.mp4",
        "decode",
    )
    _bad(SV4D2, ["--input_path=empty", tiny4d2], scratch, monkeypatch, capsys, "empty", "no")
    _bad(
        SV4D,
        ["--input_path=frames/*.png"],
        scratch,
        monkeypatch,
        capsys,
        "frames/*.png",
        "matches no files",
    )
    (scratch / "notes.txt").write_text("x")
    _bad(SV4D, ["--input_path=notes.txt"], scratch, monkeypatch, capsys, "notes.txt")


def test_bad_model_file_name_without_config(scratch, monkeypatch, capsys):
    (scratch / "mine.safetensors").symlink_to(scratch / "checkpoints" / "sv4d2.safetensors")
    _bad(
        SV4D2,
        ["--input_path=clip.gif", "--model_path=mine.safetensors"],
        scratch,
        monkeypatch,
        capsys,
        "mine.safetensors",
        "sv4d2",
        "--config",
    )


def test_config_window_must_match_the_release(scratch, monkeypatch, capsys):
    _bad(
        SV4D2,
        [
            "--input_path=clip.gif",
            "--model_path=checkpoints/sv4d2.safetensors",
            f"--config={CONFIGS / 'sv4d2_8views_tiny.yaml'}",
        ],
        scratch,
        monkeypatch,
        capsys,
        "sv4d2_8views_tiny.yaml",
        "12 x 4",
    )


def test_missing_and_corrupt_checkpoints_say_where(scratch, tmp_path_factory, monkeypatch, capsys):
    empty = tmp_path_factory.mktemp("no_checkpoints")
    (empty / "clip.gif").symlink_to(scratch / "clip.gif")

    def no_decoding(*args):
        raise AssertionError("the input is decoded before the checkpoint is checked")

    with monkeypatch.context() as patch:
        patch.setattr(sv4d_cli, "read_input", no_decoding)
        line = _bad(
            SV4D,
            ["--input_path=clip.gif"],
            empty,
            monkeypatch,
            capsys,
            "checkpoints/sv4d.safetensors",
            "--ckpt",
        )
        assert "not found" in line
        line = _bad(
            SV4D2,
            ["--input_path=clip.gif", "--model_path=checkpoints/sv4d2_8views.safetensors"],
            empty,
            monkeypatch,
            capsys,
            "checkpoints/sv4d2_8views.safetensors",
        )
    corrupt = empty / "checkpoints"
    corrupt.mkdir()
    (corrupt / "sv4d.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    (corrupt / "sv3d_u.safetensors").symlink_to(scratch / "checkpoints" / "sv3d_u.safetensors")
    _bad(
        SV4D,
        [
            "--input_path=clip.gif",
            f"--config={CONFIGS / 'sv4d_tiny.yaml'}",
            f"--sv3d_config={CONFIGS / 'sv3d_u_tiny.yaml'}",
        ],
        empty,
        monkeypatch,
        capsys,
        "checkpoints/sv4d.safetensors",
        "corrupt",
    )
    with open(scratch / "checkpoints" / "sv3d_u.safetensors", "rb") as source:
        (corrupt / "sv3d_p.safetensors").write_bytes(source.read()[:5000])
    (corrupt / "sv4d.safetensors").unlink()
    (corrupt / "sv4d.safetensors").symlink_to(scratch / "checkpoints" / "sv4d.safetensors")
    _bad(
        SV4D,
        [
            "--input_path=clip.gif",
            "--sv3d_version=sv3d_p",
            f"--config={CONFIGS / 'sv4d_tiny.yaml'}",
        ],
        empty,
        monkeypatch,
        capsys,
        "checkpoints/sv3d_p.safetensors",
    )


def test_camera_value_counts(scratch, monkeypatch, capsys):
    _bad(
        SV4D,
        ["--input_path=clip.gif", "--elevations_deg=5,10,15"],
        scratch,
        monkeypatch,
        capsys,
        "elevations_deg",
        "21",
        "3",
    )
    _bad(
        SV4D,
        ["--input_path=clip.gif", "--azimuths_deg=[0,90,180,270]"],
        scratch,
        monkeypatch,
        capsys,
        "azimuths_deg",
        "21",
        "4",
    )
    tiny = f"--config={CONFIGS / 'sv4d2_tiny.yaml'}"
    _bad(
        SV4D2,
        ["--input_path=clip.gif", tiny, "--azimuths_deg=0,30,60"],
        scratch,
        monkeypatch,
        capsys,
        "azimuths_deg",
        "5",
    )
    _bad(
        SV4D2,
        [
            "--input_path=clip.gif",
            "--model_path=checkpoints/sv4d2_8views.safetensors",
            f"--config={CONFIGS / 'sv4d2_8views_tiny.yaml'}",
            "--elevations_deg=0,0,0,0,0",
        ],
        scratch,
        monkeypatch,
        capsys,
        "elevations_deg",
        "9",
    )


def test_sizes_steps_and_frames(scratch, monkeypatch, capsys):
    _bad(SV4D, ["--img_size=100"], scratch, monkeypatch, capsys, "--img_size", "64")
    _bad(SV4D2, ["--img_size=0"], scratch, monkeypatch, capsys, "--img_size")
    _bad(SV4D, ["--num_steps=0"], scratch, monkeypatch, capsys, "--num_steps")
    _bad(SV4D2, ["--num_steps=-3"], scratch, monkeypatch, capsys, "--num_steps")
    _bad(
        SV4D2,
        ["--input_path=clip.gif", f"--config={CONFIGS / 'sv4d2_tiny.yaml'}", "--n_frames=5"],
        scratch,
        monkeypatch,
        capsys,
        "n_frames",
        "12",
    )


def test_remove_bg_without_rembg(scratch, monkeypatch, capsys):
    monkeypatch.setenv("U2NET_HOME", str(scratch / "no_models"))
    _bad(SV4D, ["--input_path=clip.gif", "--remove_bg"], scratch, monkeypatch, capsys, "rembg")
    _bad(
        SV4D2, ["--input_path=clip.gif", "--remove_bg=True"], scratch, monkeypatch, capsys, "rembg"
    )
