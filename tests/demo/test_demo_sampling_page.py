"""The Streamlit image page through Streamlit's test client, on tiny random-weight models."""

from __future__ import annotations

import numpy as np
import pytest

from demo_support import REPO

PAGE = str(REPO / "scripts" / "demo" / "sampling.py")


def _app(monkeypatch, models=None, outputs=None, checkpoints=None):
    from streamlit.testing.v1 import AppTest

    import streamlit as st

    st.cache_resource.clear()
    for name in ("SGM_DEMO_CHECKPOINTS", "SGM_DEMO_CONFIGS", "SGM_DEMO_CONFIG",
                 "SGM_DEMO_CKPT", "SGM_DEMO_OUTPUTS"):
        monkeypatch.delenv(name, raising=False)
    if models is not None:
        monkeypatch.setenv("SGM_DEMO_CHECKPOINTS", str(models["checkpoints"]))
        monkeypatch.setenv("SGM_DEMO_CONFIGS", str(models["configs"]))
    if checkpoints is not None:
        monkeypatch.setenv("SGM_DEMO_CHECKPOINTS", str(checkpoints))
    if outputs is not None:
        monkeypatch.setenv("SGM_DEMO_OUTPUTS", str(outputs))
    monkeypatch.setenv("SGM_DEMO_DEVICE", "cpu")
    return AppTest.from_file(PAGE, default_timeout=120)


def test_widgets_present_and_missing_checkpoint_message(monkeypatch, tmp_path):
    at = _app(monkeypatch, checkpoints=tmp_path / "empty").run()
    assert not at.exception
    assert at.title[0].value == "Stable Diffusion sampling"
    labels = {w.label for w in [*at.selectbox, *at.radio, *at.checkbox, *at.text_area,
                                 *at.number_input, *at.button]}
    assert {"Model Version", "Mode", "Low vram mode", "Load SDXL-refiner?", "Prompt",
            "Resolution (width x height)", "Steps", "Sampler", "Discretization", "Guider",
            "Seed", "Sample"} <= labels
    assert [e.value for e in at.error] == [
        f"SDXL-base-1.0: checkpoint sd_xl_base_1.0.safetensors not found. Put it at "
        f"{tmp_path / 'empty' / 'sd_xl_base_1.0.safetensors'} (folder set by --checkpoints / "
        "SGM_DEMO_CHECKPOINTS); nothing is downloaded."
    ]
    assert at.button(key="sample").disabled


def _decode_bits(path) -> list[int]:
    """The 48-bit message read back by invisible-watermark's own decoder."""
    import cv2
    from imwatermark import WatermarkDecoder

    return list(WatermarkDecoder("bits", 48).decode(cv2.imread(str(path)), "dwtDct"))


def test_txt2img_shows_and_saves_the_library_sample(monkeypatch, tmp_path, tiny_image_models):
    from PIL import Image

    from sgm.demo.image import ImageRequest, check_request, image_model
    from sgm.demo.options import demo_options
    from sgm.inference.api import SamplingPipeline
    from sgm.inference.helpers import embed_watermark
    from sgm.inference.watermark import WATERMARK_BITS

    at = _app(monkeypatch, tiny_image_models, outputs=tmp_path / "out").run()
    assert not at.error
    at.selectbox(key="resolution").select("custom").run()
    at.number_input(key="W").set_value(256)
    at.number_input(key="H").set_value(256)
    at.number_input(key="steps").set_value(3)
    at.text_area(key="prompt").input("a red cube")
    at.checkbox(key="save").check()
    at.button(key="sample").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert len(at.image) == 1 and len(at.image[0].value) == 1
    saved = sorted((tmp_path / "out" / "txt2img" / "SDXL-base-1.0" / "samples").iterdir())
    assert [p.name for p in saved] == ["000000000.png"]
    with Image.open(saved[0]) as png:
        assert png.size == (256, 256)
        assert png.text["prompt"] == "a red cube" and png.text["seed"] == "42"
        pixels = np.asarray(png.convert("RGB"), dtype=np.float32) / 255
    assert _decode_bits(saved[0]) == WATERMARK_BITS

    # the same request through the library gives the same picture (up to the watermark)
    options = demo_options(environ={"SGM_DEMO_CHECKPOINTS": str(tiny_image_models["checkpoints"]),
                                    "SGM_DEMO_CONFIGS": str(tiny_image_models["configs"])})
    model = image_model("SDXL-base-1.0", options)
    pipe = SamplingPipeline(config=str(model.files.config), ckpt=model.files.ckpt,
                            spec=model.spec, device="cpu")
    params = check_request(ImageRequest(prompt="a red cube", width=256, height=256, steps=3))
    expected = embed_watermark(pipe.text_to_image(params, "a red cube", seed=42))
    expected = expected[0].permute(1, 2, 0).numpy()
    assert np.abs(pixels - expected).max() <= 1 / 255
