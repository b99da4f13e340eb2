"""The Streamlit image page through Streamlit's test client, on tiny random-weight models."""

from __future__ import annotations

import numpy as np
import pytest
from demo_support import REPO, capture_media, shown_images

PAGE = str(REPO / "scripts" / "demo" / "sampling.py")


def _app(monkeypatch, models=None, outputs=None, checkpoints=None):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    st.cache_resource.clear()
    for name in (
        "SGM_DEMO_CHECKPOINTS",
        "SGM_DEMO_CONFIGS",
        "SGM_DEMO_CONFIG",
        "SGM_DEMO_CKPT",
        "SGM_DEMO_OUTPUTS",
    ):
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
    labels = {
        w.label
        for w in [
            *at.selectbox,
            *at.radio,
            *at.checkbox,
            *at.text_area,
            *at.number_input,
            *at.button,
        ]
    }
    assert {
        "Model Version",
        "Mode",
        "Low vram mode",
        "Load SDXL-refiner?",
        "Prompt",
        "Resolution (width x height)",
        "Steps",
        "Sampler",
        "Discretization",
        "Guider",
        "Seed",
        "Sample",
    } <= labels
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

    from sgm.demo.image import ImageRequest, check_request, to_pil
    from sgm.inference.helpers import embed_watermark
    from sgm.inference.watermark import WATERMARK_BITS

    media = capture_media(monkeypatch)
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
    (pipe,) = _pipelines(tiny_image_models, "SDXL-base-1.0")
    params = check_request(ImageRequest(prompt="a red cube", width=256, height=256, steps=3))
    sample = pipe.text_to_image(params, "a red cube", seed=42)
    assert [image.tolist() for image in shown_images(media)] == [
        np.asarray(to_pil(sample)[0]).tolist()
    ]
    expected = embed_watermark(sample)[0].permute(1, 2, 0).numpy()
    assert np.abs(pixels - expected).max() <= 1 / 255


def _pipelines(models, *versions):
    from sgm.demo.image import image_model
    from sgm.demo.options import demo_options
    from sgm.inference.api import SamplingPipeline

    options = demo_options(
        environ={
            "SGM_DEMO_CHECKPOINTS": str(models["checkpoints"]),
            "SGM_DEMO_CONFIGS": str(models["configs"]),
        }
    )
    out = []
    for version in versions:
        model = image_model(version, options, selected=False)
        out.append(
            SamplingPipeline(
                config=str(model.files.config), ckpt=model.files.ckpt, spec=model.spec, device="cpu"
            )
        )
    return out


def _png(width: int, height: int) -> bytes:
    import io

    from PIL import Image

    pixels = np.random.RandomState(1).randint(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_img2img_needs_an_image_then_matches_the_library(monkeypatch, tiny_image_models):
    import io

    import torch
    from PIL import Image

    from sgm.demo.image import ImageRequest, check_request, generate, init_image_tensor, to_pil

    media = capture_media(monkeypatch)
    at = _app(monkeypatch, tiny_image_models).run()
    at.radio(key="mode").set_value("img2img").run()
    assert "Load SDXL-refiner?" not in {c.label for c in at.checkbox}
    at.number_input(key="steps").set_value(4)
    at.slider(key="strength").set_value(0.5)
    at.button(key="sample").click().run()
    assert [e.value for e in at.error] == ["img2img needs an input image: upload one first"]
    at.file_uploader(key="init_image").set_value(("in.png", _png(96, 72), "image/png"))
    at.button(key="sample").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    shown = shown_images(media)
    assert len(shown) == 1 and shown[0].shape == (64, 64, 3)  # sides cut to multiples of 64

    (pipe,) = _pipelines(tiny_image_models, "SDXL-base-1.0")
    image = init_image_tensor(Image.open(io.BytesIO(_png(96, 72))))
    request = ImageRequest(width=64, height=64, steps=4, strength=0.5)
    params = check_request(request, image)
    expected = generate(pipe, request, image)["samples"]
    assert np.array_equal(shown[0], np.asarray(to_pil(expected)[0]))
    # which is the pipeline's img2img with the global generator seeded as well
    torch.manual_seed(42)
    direct = pipe.image_to_image(params, image, request.prompt, seed=42)
    assert torch.equal(direct, expected)


def test_refiner_hand_off_matches_the_library(monkeypatch, tiny_image_models):
    from sgm.demo.image import ImageRequest, check_request, to_pil
    from sgm.inference.api import text_to_image_refined

    media = capture_media(monkeypatch)
    at = _app(monkeypatch, tiny_image_models).run()
    at.checkbox(key="refiner").check().run()
    at.selectbox(key="resolution").select("custom").run()
    at.number_input(key="W").set_value(64)
    at.number_input(key="H").set_value(64)
    at.number_input(key="steps").set_value(4)
    at.slider(key="refiner_strength").set_value(0.5)
    at.button(key="sample").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    shown = shown_images(media)
    assert len(shown) == 1

    base, refiner = _pipelines(tiny_image_models, "SDXL-base-1.0", "SDXL-refiner-1.0")
    params = check_request(ImageRequest(width=64, height=64, steps=4))
    expected = text_to_image_refined(
        base, refiner, params, ImageRequest.prompt, seed=42, refiner_strength=0.5
    )
    assert np.array_equal(shown[0], np.asarray(to_pil(expected)[0]))


def test_bad_input_is_shown_before_sampling(monkeypatch, tiny_image_models, tmp_path):
    media = capture_media(monkeypatch)
    at = _app(monkeypatch, tiny_image_models, outputs=tmp_path / "out").run()
    at.selectbox(key="resolution").select("custom").run()
    at.number_input(key="W").set_value(72)
    at.number_input(key="H").set_value(64)
    at.checkbox(key="save").check()
    at.button(key="sample").click().run()
    assert not at.exception
    assert len(at.error) == 1 and "72" in at.error[0].value and "multiple" in at.error[0].value
    assert not shown_images(media) and not (tmp_path / "out").exists()


def test_check_request_names_the_field():
    from sgm.demo.image import ImageRequest, check_request
    from sgm.errors import InputError

    for changes, culprit in (
        ({"steps": 0}, "steps"),
        ({"seed": -1}, "seed"),
        ({"num_samples": 0}, "number of samples"),
        ({"width": 100}, "width"),
        ({"sampler": "Nope"}, "sampler"),
    ):
        with pytest.raises(InputError, match=culprit):
            check_request(ImageRequest(**changes))
    with pytest.raises(InputError, match="img2img strength"):
        check_request(ImageRequest(strength=0.0), image=object())
    with pytest.raises(InputError, match="refiner strength"):
        check_request(ImageRequest(refiner_strength=1.5), refiner=True)


def test_speedups_on_the_page_match_the_library(monkeypatch, tiny_image_models):
    """DeepCache set on the page gives the library's DeepCache sample; combining it with
    T-GATE is refused on the page before sampling."""
    from sgm.demo.image import ImageRequest, check_request, to_pil

    media = capture_media(monkeypatch)
    at = _app(monkeypatch, tiny_image_models).run()
    at.selectbox(key="resolution").select("custom").run()
    at.number_input(key="W").set_value(128)
    at.number_input(key="H").set_value(128)
    at.number_input(key="steps").set_value(4)
    at.number_input(key="deepcache").set_value(2)
    at.button(key="sample").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    (pipe,) = _pipelines(tiny_image_models, "SDXL-base-1.0")
    request = ImageRequest(width=128, height=128, steps=4, deepcache=2)
    cached = pipe.text_to_image(check_request(request), request.prompt, seed=42)
    plain = pipe.text_to_image(
        check_request(ImageRequest(width=128, height=128, steps=4)), request.prompt, seed=42
    )
    assert not np.array_equal(np.asarray(to_pil(cached)[0]), np.asarray(to_pil(plain)[0]))
    assert [image.tolist() for image in shown_images(media)] == [
        np.asarray(to_pil(cached)[0]).tolist()
    ]
    at.number_input(key="tgate").set_value(2)
    at.button(key="sample").click().run()
    assert [e.value for e in at.error] == ["DeepCache and T-GATE cannot be combined; choose one"]
