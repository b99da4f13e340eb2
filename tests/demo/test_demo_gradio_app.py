"""The Gradio SVD-XT 1.1 page: Blocks build, handlers run on a tiny SVD-structured model,
missing checkpoints and bad input are refused with one message."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from demo_support import REPO

SCRIPT = REPO / "scripts" / "demo" / "gradio_app.py"


def _image(width=120, height=90):
    from PIL import Image

    pixels = np.random.RandomState(0).randint(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _components(demo, kind):
    return [block for block in demo.blocks.values() if type(block).__name__ == kind]


def test_blocks_build_with_missing_checkpoint_message(tmp_path):
    import gradio as gr

    from sgm.demo.gradio_svd import SvdApp, build_demo
    from sgm.demo.options import DemoOptions
    from sgm.errors import CheckpointError

    app = SvdApp(DemoOptions(checkpoints=tmp_path), width=64, height=64, frames=3, steps=2)
    demo = build_demo(app)
    assert isinstance(demo, gr.Blocks)
    message = (
        f"svd_xt_1_1: checkpoint svd_xt_1_1.safetensors not found. Put it at "
        f"{tmp_path / 'svd_xt_1_1.safetensors'} (folder set by --checkpoints / "
        "SGM_DEMO_CHECKPOINTS); nothing is downloaded."
    )
    assert [m.value for m in _components(demo, "Markdown")][1] == f"**{message}**"
    assert len(_components(demo, "Image")) == 1 and len(_components(demo, "Video")) == 1
    sliders = {s.label: (s.minimum, s.maximum, s.value) for s in _components(demo, "Slider")}
    assert sliders["Motion bucket id"] == (1, 255, 127)
    assert sliders["Frames per second"] == (5, 30, 6)
    assert [c.value for c in _components(demo, "Checkbox")] == [True]
    with pytest.raises(CheckpointError, match="svd_xt_1_1.safetensors not found"):
        app.sample(_image(), 1, False)
    assert not any(tmp_path.iterdir())


def test_handlers_run_on_a_tiny_model(tmp_path, tiny_video_models):
    import av
    import gradio as gr

    from sgm.demo.gradio_svd import SvdApp, build_demo
    from sgm.demo.options import DemoOptions

    options = DemoOptions(
        checkpoints=tiny_video_models["checkpoints"],
        configs=tiny_video_models["configs"],
        device="cpu",
        outputs=tmp_path / "out",
    )
    app = SvdApp(options, width=64, height=64, frames=3, steps=2, decoding_t=2)
    demo = build_demo(app)
    assert app.problem is None and len(_components(demo, "Markdown")) == 1
    handlers = {fn.name: fn.fn for fn in demo.fns.values()}
    resized = handlers["resize"](_image())
    assert resized.size == (64, 64)
    with pytest.raises(gr.Error, match="no input image"):
        handlers["run"](None, 3, False, 127, 6)
    path, seed = handlers["run"](resized, 3, False, 127, 6)
    again, _ = handlers["run"](resized, 3, False, 127, 6)
    assert seed == 3 and path.endswith("000000.mp4") and again.endswith("000001.mp4")
    decoded = []
    for name in (path, again):
        with av.open(name) as container:
            stream = container.streams.video[0]
            assert stream.average_rate == 7  # fps_id 6 -> 7 frames per second
            decoded.append(
                np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
            )
    assert decoded[0].shape == (3, 64, 64, 3)
    assert np.array_equal(decoded[0], decoded[1])  # same seed, same video


def test_bad_flag_exits_2_before_loading(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--num_steps", "0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--num_steps" in result.stderr
    assert not any(tmp_path.iterdir())
