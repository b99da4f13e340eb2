"""The Streamlit Turbo page (``scripts/demo/turbo.py``): SDXL-Turbo and SD-Turbo in 1 to 4
steps, sampled again whenever the prompt, steps or seed change."""

from __future__ import annotations

import os
from typing import Any

import streamlit as st

from .image import (
    TURBO_PROMPT,
    TURBO_VERSIONS,
    ImageModel,
    check_request,
    image_model,
    load_pipeline,
    to_pil,
    turbo_request,
)
from .options import TINY_MODEL_HINT, DemoOptions, missing_checkpoint
from .st_common import cached_model, page_options, run_checked

TITLE = "SDXL-Turbo and SD-Turbo"


def _shift_seed(delta: int) -> None:
    st.session_state["seed"] = max(0, int(st.session_state.get("seed", 0)) + delta)


def _seed_widgets() -> int:
    st.session_state.setdefault("seed", 0)
    columns = st.columns([4, 1, 1], vertical_alignment="bottom")
    seed = columns[0].number_input("Seed", 0, 2**32 - 1, key="seed")
    columns[1].button("−", on_click=_shift_seed, args=(-1,), key="seed_down")
    columns[2].button("+", on_click=_shift_seed, args=(1,), key="seed_up")
    return int(seed)


def _sample(
    model: ImageModel,
    options: DemoOptions,
    prompt: str,
    steps: int,
    seed: int,
    width: int,
    height: int,
) -> Any:
    request = turbo_request(prompt, steps, seed, width, height)
    key = (str(model.files.config), str(model.files.ckpt), options.device)
    pipeline = cached_model("turbo", key, lambda: load_pipeline(model, options.device))
    params = check_request(request)
    return pipeline.text_to_image(params, request.prompt, samples=1, seed=request.seed)


def main(script: str | os.PathLike) -> None:
    """Render the page; ``script`` is the page file (its command line is read from argv)."""
    st.set_page_config(page_title=TITLE, layout="centered")
    st.title(TITLE)
    options = page_options(script)
    version = st.selectbox("Model Version", list(TURBO_VERSIONS), 0, key="version")
    model = run_checked(lambda: image_model(version, options))
    if model is None:
        st.stop()
    problem = missing_checkpoint(model.files)
    if problem:
        st.error(problem)
        st.info(TINY_MODEL_HINT)
    side = st.sidebar
    width = int(side.number_input("Width", 64, 2048, model.spec.width, 64, key="W"))
    height = int(side.number_input("Height", 64, 2048, model.spec.height, 64, key="H"))
    steps = int(
        st.number_input(
            "Steps", 1, 4, 1, key="steps", help="1 to 4 steps; Turbo models use no guidance"
        )
    )
    prompt = st.text_input("Prompt", TURBO_PROMPT, key="prompt")
    seed = _seed_widgets()
    if problem or not prompt.strip():
        return
    with st.spinner("Sampling..."):
        samples = run_checked(lambda: _sample(model, options, prompt, steps, seed, width, height))
    if samples is not None:
        st.image(
            to_pil(samples),
            caption=[f"{version}, {steps} step(s), seed {seed}"],
            output_format="PNG",
        )
