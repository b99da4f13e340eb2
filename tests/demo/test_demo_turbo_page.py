"""The Streamlit Turbo page on tiny random-weight models under the Turbo file names."""

from __future__ import annotations

import numpy as np
import pytest
from demo_support import REPO, capture_media, shown_images

PAGE = str(REPO / "scripts" / "demo" / "turbo.py")


def _app(monkeypatch, checkpoints, configs=None):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    st.cache_resource.clear()
    for name in ("SGM_DEMO_CONFIGS", "SGM_DEMO_CONFIG", "SGM_DEMO_CKPT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SGM_DEMO_CHECKPOINTS", str(checkpoints))
    if configs is not None:
        monkeypatch.setenv("SGM_DEMO_CONFIGS", str(configs))
    monkeypatch.setenv("SGM_DEMO_DEVICE", "cpu")
    return AppTest.from_file(PAGE, default_timeout=120)


def test_widgets_and_missing_checkpoint(monkeypatch, tmp_path):
    at = _app(monkeypatch, tmp_path).run()
    assert not at.exception
    assert at.title[0].value == "SDXL-Turbo and SD-Turbo"
    assert at.selectbox(key="version").options == ["SDXL-Turbo", "SD-Turbo"]
    steps = at.number_input(key="steps")
    assert (steps.value, steps.min, steps.max) == (1, 1, 4)
    assert at.text_input(key="prompt").value.startswith("A cinematic shot of a baby racoon")
    assert [e.value for e in at.error] == [
        f"SDXL-Turbo: checkpoint sd_xl_turbo_1.0.safetensors not found. Put it at "
        f"{tmp_path / 'sd_xl_turbo_1.0.safetensors'} (folder set by --checkpoints / "
        "SGM_DEMO_CHECKPOINTS); nothing is downloaded."
    ]
    assert not at.image
    at.button(key="seed_up").click().run()
    at.button(key="seed_up").click().run()
    at.button(key="seed_down").click().run()
    assert at.number_input(key="seed").value == 1


@pytest.mark.parametrize("version", ["SDXL-Turbo", "SD-Turbo"])
def test_prompt_gives_the_turbo_sample(monkeypatch, tiny_image_models, version):
    from sgm.demo.image import image_model, to_pil
    from sgm.demo.options import demo_options
    from sgm.inference.api import SamplingParams, SamplingPipeline

    media = capture_media(monkeypatch)
    at = _app(monkeypatch, tiny_image_models["checkpoints"], tiny_image_models["configs"])
    at.run()
    at.selectbox(key="version").select(version).run()
    at.number_input(key="W").set_value(64)
    at.number_input(key="H").set_value(64)
    at.number_input(key="steps").set_value(4)
    at.text_input(key="prompt").input("a fox").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert len(at.image) == 1 and at.image[0].captions == [f"{version}, 4 step(s), seed 0"]

    # the page's sample is the pipeline's Turbo sample (4 steps, seed 0)
    options = demo_options(
        environ={
            "SGM_DEMO_CHECKPOINTS": str(tiny_image_models["checkpoints"]),
            "SGM_DEMO_CONFIGS": str(tiny_image_models["configs"]),
        }
    )
    model = image_model(version, options)
    pipe = SamplingPipeline(
        config=str(model.files.config), ckpt=model.files.ckpt, spec=model.spec, device="cpu"
    )
    assert pipe.is_turbo
    params = SamplingParams(width=64, height=64, steps=4, orig_width=64, orig_height=64)
    a = pipe.text_to_image(params, "a fox", seed=0)
    assert a.shape == (1, 3, 64, 64)
    expected = np.asarray(to_pil(a)[0])
    assert any(np.array_equal(image, expected) for image in shown_images(media))


def test_more_than_four_steps_is_refused():
    from sgm.demo.image import turbo_request
    from sgm.errors import InputError

    with pytest.raises(InputError, match="1 to 4 steps, got 5"):
        turbo_request("a fox", 5, 0, 512, 512)
    with pytest.raises(InputError, match="seed"):
        turbo_request("a fox", 1, -1, 512, 512)
