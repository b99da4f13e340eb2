"""The Streamlit image page (``scripts/demo/sampling.py``): SD 2.1 and SDXL text-to-image
and image-to-image, with SDXL's refiner and a low-VRAM mode."""

from __future__ import annotations

import os
from typing import Any

import streamlit as st

from ..inference.helpers import perform_save_locally
from .image import (
    DEFAULT_PROMPT,
    IMAGE_VERSIONS,
    REFINER_FOR,
    SDXL_SIZES,
    ImageModel,
    ImageRequest,
    check_request,
    generate,
    image_model,
    init_image_tensor,
    load_pipeline,
    to_pil,
)
from .options import TINY_MODEL_HINT, DemoOptions, missing_checkpoint
from .st_common import cached_model, page_options, run_checked, sampler_widgets

TITLE = "Stable Diffusion sampling"
CUSTOM = "custom"


def _pipeline(model: ImageModel, options: DemoOptions, low_vram: bool) -> Any:
    key = (str(model.files.config), str(model.files.ckpt), options.device, low_vram)
    return cached_model("image", key, lambda: load_pipeline(model, options.device, low_vram))


def _size_widgets(model: ImageModel, request: ImageRequest) -> None:
    """SDXL base: its trained sizes (or custom); other models: width and height."""
    spec = model.spec
    if not spec.is_legacy and spec.width == 1024:
        labels = [f"{w} x {h}" for w, h in SDXL_SIZES] + [CUSTOM]
        choice = st.selectbox(
            "Resolution (width x height)", labels, labels.index("1024 x 1024"), key="resolution"
        )
        if choice != CUSTOM:
            request.width, request.height = SDXL_SIZES[labels.index(choice)]
            return
    columns = st.columns(2)
    request.width = int(columns[0].number_input("Width", 8, 4096, spec.width, 8, key="W"))
    request.height = int(columns[1].number_input("Height", 8, 4096, spec.height, 8, key="H"))


def _models(version: str, use_refiner: bool, options: DemoOptions) -> list[ImageModel]:
    models = [image_model(version, options)]
    if use_refiner:
        models.append(image_model(REFINER_FOR[version], options, selected=False))
    return models


def _save(
    options: DemoOptions, version: str, mode: str, samples: Any, request: ImageRequest
) -> list[str]:
    folder = os.path.join(str(options.outputs), mode, version, "samples")
    meta = {
        "prompt": request.prompt,
        "seed": str(request.seed),
        "model": version,
        "steps": str(request.steps),
        "sampler": request.sampler,
        "software": "sgm demo sampling",
    }
    return perform_save_locally(folder, samples, metadata=meta)


def main(script: str | os.PathLike) -> None:
    """Render the page; ``script`` is the page file (its command line is read from argv)."""
    st.set_page_config(page_title=TITLE, layout="wide")
    st.title(TITLE)
    options = page_options(script)
    version = st.selectbox("Model Version", list(IMAGE_VERSIONS), 0, key="version")
    mode = st.radio("Mode", ("txt2img", "img2img"), horizontal=True, key="mode")
    low_vram = st.checkbox(
        "Low vram mode",
        True,
        key="lowvram",
        help="keep the model on the host; move each part to the device only while it runs",
    )
    use_refiner = False
    if version in REFINER_FOR and mode == "txt2img":
        use_refiner = st.checkbox("Load SDXL-refiner?", False, key="refiner")
    models = run_checked(lambda: _models(version, use_refiner, options))
    if models is None:
        st.stop()
    problems = [m for m in map(missing_checkpoint, (m.files for m in models)) if m]
    for problem in problems:
        st.error(problem)
    if problems:
        st.info(TINY_MODEL_HINT)

    request = ImageRequest()
    base = models[0]
    if mode == "txt2img":
        _size_widgets(base, request)
    request.prompt = st.text_area("Prompt", DEFAULT_PROMPT, key="prompt")
    if base.spec.is_legacy:
        request.negative_prompt = st.text_input("Negative prompt", "", key="negative")
    upload = None
    if mode == "img2img":
        upload = st.file_uploader(
            "Input image", type=["png", "jpg", "jpeg", "webp"], key="init_image"
        )
        request.strength = st.slider("Img2img strength", 0.0, 1.0, 0.75, 0.01, key="strength")
    sampler_widgets(request)
    request.seed = int(st.sidebar.number_input("Seed", 0, 2**32 - 1, 42, key="seed"))
    request.num_samples = int(
        st.sidebar.number_input("Number of samples", 1, 8, 1, key="num_samples")
    )
    if use_refiner:
        st.sidebar.subheader("Refiner")
        request.refiner_strength = st.sidebar.slider(
            "Refinement strength", 0.0, 1.0, 0.15, 0.01, key="refiner_strength"
        )
        request.finish_with_refiner = st.sidebar.checkbox(
            "Finish denoising with refiner", True, key="finish"
        )
    with st.sidebar.expander("Speed-ups (off: 0)"):
        request.deepcache = int(
            st.number_input("DeepCache: one full step in N", 0, 10, 0, key="deepcache")
        )
        request.tgate = int(st.number_input("T-GATE: gate step", 0, 1000, 0, key="tgate"))
        request.tome = float(st.slider("Token merging ratio", 0.0, 0.75, 0.0, 0.05, key="tome"))
    save = st.sidebar.checkbox("Save images locally", False, key="save")

    if not st.button("Sample", type="primary", disabled=bool(problems), key="sample"):
        return
    with st.spinner("Sampling..."):
        result = run_checked(lambda: _sample(models, request, upload, options, low_vram))
    if result is None:
        return
    samples = result["samples"]
    if "base" in result:
        st.image(
            to_pil(result["base"]), caption=["base"] * len(result["base"]), output_format="PNG"
        )
    st.image(to_pil(samples), caption=[f"seed {request.seed}"] * len(samples), output_format="PNG")
    if save:
        paths = run_checked(lambda: _save(options, version, mode, samples, request))
        if paths:
            st.success("Saved " + ", ".join(paths))


def _sample(
    models: list[ImageModel],
    request: ImageRequest,
    upload: Any,
    options: DemoOptions,
    low_vram: bool,
) -> dict:
    image = None
    if st.session_state.get("mode") == "img2img":
        image = init_image_tensor(upload)
        request.height, request.width = (int(s) for s in image.shape[-2:])
    check_request(request, image, len(models) > 1)
    pipelines = [_pipeline(m, options, low_vram) for m in models]
    if image is not None:
        image = image.to(pipelines[0].device)
    refiner = pipelines[1] if len(pipelines) > 1 else None
    return generate(pipelines[0], request, image, refiner)
