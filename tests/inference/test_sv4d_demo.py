"""The Gradio SV4D page: the Blocks build, a missing checkpoint is one message naming the
file, and the handler samples on toy SV4D / SV3D engines."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import save_state

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "tests" / "configs"
SCRIPT = REPO / "scripts" / "demo" / "gradio_app_sv4d.py"

pytest.importorskip("gradio")


@pytest.fixture(scope="module")
def models(tmp_path_factory, video_arch_dir):
    """Tiny SV4D and SV3D_u configs under the released names, random weights under the
    released checkpoint names, and a short gif."""
    from PIL import Image, ImageDraw

    from sgm.inference.video import load_video_model

    root = tmp_path_factory.mktemp("sv4d_demo")
    (root / "configs").mkdir()
    for name, frames in (("sv4d", None), ("sv3d_u", 21)):
        shutil.copyfile(CONFIGS / f"{name}_tiny.yaml", root / "configs" / f"{name}.yaml")
        torch.manual_seed(1)
        model = load_video_model(CONFIGS / f"{name}_tiny.yaml", None, "cpu", frames)
        save_state(model, root / "checkpoints" / f"{name}.safetensors")
    gif = []
    for i in range(5):
        frame = Image.new("RGB", (70, 70), "white")
        ImageDraw.Draw(frame).rectangle((20 + i, 20, 45 + i, 50), fill=(20, 90, 200))
        gif.append(frame)
    gif[0].save(root / "clip.gif", save_all=True, append_images=gif[1:])
    return root


def _components(demo, kind):
    return [block for block in demo.blocks.values() if type(block).__name__ == kind]


def test_blocks_build_and_name_the_missing_checkpoint(models, tmp_path):
    import gradio as gr

    from sgm.demo.gradio_sv4d import Sv4dApp, build_demo
    from sgm.demo.options import DemoOptions
    from sgm.errors import CheckpointError

    (tmp_path / "checkpoints").mkdir()
    shutil.copyfile(
        models / "checkpoints" / "sv4d.safetensors", tmp_path / "checkpoints" / "sv4d.safetensors"
    )
    options = DemoOptions(
        checkpoints=tmp_path / "checkpoints", configs=models / "configs", outputs=tmp_path / "out"
    )
    app = Sv4dApp(options, img_size=64)
    demo = build_demo(app)
    assert isinstance(demo, gr.Blocks)
    missing = tmp_path / "checkpoints" / "sv3d_u.safetensors"
    message = [m.value for m in _components(demo, "Markdown")][1]
    assert message == (
        f"**sv3d_u: checkpoint sv3d_u.safetensors not found. Put it at "
        f"{missing} (folder set by --checkpoints / SGM_DEMO_CHECKPOINTS); "
        "nothing is downloaded.**"
    )
    assert len(_components(demo, "Video")) == 3
    sliders = {s.label: (s.minimum, s.maximum, s.value) for s in _components(demo, "Slider")}
    assert sliders["Seed"] == (0, 100, 23)
    assert sliders["Frames encoded at a time"] == (1, 40, 8)
    assert sliders["Frames decoded at a time"] == (1, 14, 4)
    with pytest.raises(CheckpointError, match="sv3d_u.safetensors not found"):
        app.sample(str(models / "clip.gif"))
    assert not (tmp_path / "out").exists()


def test_handler_samples_on_tiny_models(models, tmp_path):
    import gradio as gr

    from sgm.demo.gradio_sv4d import Sv4dApp, build_demo
    from sgm.demo.options import DemoOptions

    options = DemoOptions(
        checkpoints=models / "checkpoints",
        configs=models / "configs",
        device="cpu",
        outputs=tmp_path / "out",
    )
    app = Sv4dApp(options, img_size=64)
    demo = build_demo(app)
    assert app.problem is None and len(_components(demo, "Markdown")) == 1
    run = {fn.name: fn.fn for fn in demo.fns.values()}["run"]
    with pytest.raises(gr.Error, match="no input video"):
        run(None, 23, 1, 8, 4, False)
    views, grid = run(str(models / "clip.gif"), 23, 1, 8, 7, False)
    assert Path(views).name == "000000_t000.mp4" and Path(grid).name == "000000_grid.mp4"
    import imageio_ffmpeg

    for path, frames, size in ((views, 9, (64, 64)), (grid, 21, (192, 192))):
        reader = imageio_ffmpeg.read_frames(path)
        meta = next(reader)
        assert tuple(meta["size"]) == size and len(list(reader)) == frames
    # the top-left tile of the grid is the (processed) input video
    reader = imageio_ffmpeg.read_frames(grid)
    next(reader)
    first = np.frombuffer(next(reader), np.uint8).reshape(192, 192, 3)
    tile = first[:64, :64].astype(int)
    assert (tile[0, 0] > 240).all()  # white background
    assert np.abs(tile[32, 32] - [20, 90, 200]).max() < 40  # the blue box


def test_script_help_runs_from_the_repo_root():
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for flag in (
        "--checkpoints",
        "--configs",
        "--config",
        "--ckpt",
        "--device",
        "--share",
        "--img_size",
        "--sv3d_version",
    ):
        assert flag in result.stdout
