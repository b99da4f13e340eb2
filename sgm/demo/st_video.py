"""The Streamlit video page (``scripts/demo/video_sampling.py``): SVD family and SV3D
image-to-video, with SV3D_p's camera orbit."""

from __future__ import annotations

import os
from typing import Any

import streamlit as st

from ..inference.helpers import model_device
from ..output_files import write_new_file
from .options import TINY_MODEL_HINT, DemoOptions, missing_checkpoint
from .orbit import draw_orbit, orbit
from .st_common import cached_model, page_options, run_checked
from .video import (
    VIDEO_VERSIONS,
    VideoRequest,
    check_video_request,
    generate_video,
    input_tensor,
    load_model,
    save_outputs,
    video_model,
)

TITLE = "Stable Video Diffusion sampling"


def _sidebar(version: str) -> VideoRequest:
    spec = VIDEO_VERSIONS[version]
    side = st.sidebar
    request = VideoRequest(version=version)
    request.height = int(side.number_input("H", 64, 2048, spec.height, 64, key=f"{version}.H"))
    request.width = int(side.number_input("W", 64, 2048, spec.width, 64, key=f"{version}.W"))
    request.frames = int(side.number_input("T (frames)", 1, 128, spec.frames, key=f"{version}.T"))
    request.steps = int(side.number_input("Steps", 1, 500, spec.steps, key=f"{version}.steps"))
    request.fps = int(
        side.number_input(
            "fps", 1, 60, 6, key=f"{version}.fps", help="conditioning frame rate (fps_id = fps - 1)"
        )
    )
    request.motion_bucket_id = int(
        side.number_input("Motion bucket id", 0, 511, 127, key=f"{version}.motion")
    )
    if spec.is_sv3d:
        request.cond_aug = spec.cond_aug
    else:
        request.cond_aug = float(
            side.number_input(
                "cond_aug", 0.0, 1.0, spec.cond_aug, format="%.3f", key=f"{version}.cond_aug"
            )
        )
    request.seed = int(side.number_input("Seed", 0, 2**32 - 1, 23, key=f"{version}.seed"))
    request.decoding_t = int(
        side.number_input(
            "Decode t frames at a time",
            1,
            128,
            min(spec.decoding_t, spec.frames),
            key=f"{version}.decoding_t",
        )
    )
    return request


def _orbit_widgets(request: VideoRequest) -> None:
    request.elevation_deg = float(
        st.number_input("Elevation (degrees)", -89.0, 89.0, 5.0, key="elevation")
    )
    trajectory = st.radio(
        "Trajectory", ("same elevation", "dynamic"), horizontal=True, key="trajectory"
    )
    found = run_checked(
        lambda: orbit(request.frames, request.elevation_deg, trajectory == "dynamic", request.seed)
    )
    if found is not None:
        request.polars_rad, request.azimuths_rad = found
        st.image(draw_orbit(*found), caption="camera orbit (red: the input view)", width=320)


def main(script: str | os.PathLike) -> None:
    """Render the page; ``script`` is the page file (its command line is read from argv)."""
    st.set_page_config(page_title=TITLE, layout="wide")
    st.title(TITLE)
    options = page_options(script)
    version = st.selectbox("Model Version", list(VIDEO_VERSIONS), 2, key="version")
    low_vram = st.checkbox("Low vram mode", True, key="lowvram")
    files = run_checked(lambda: video_model(version, options))
    if files is None:
        st.stop()
    problem = missing_checkpoint(files)
    if problem:
        st.error(problem)
        st.info(TINY_MODEL_HINT)
    request = _sidebar(version)
    upload = st.file_uploader("Input image", type=["png", "jpg", "jpeg", "webp"], key="image")
    if version == "sv3d_p":
        _orbit_widgets(request)
    if not st.button("Sample", type="primary", disabled=bool(problem), key="sample"):
        return
    with st.spinner("Sampling..."):
        result = run_checked(lambda: _sample(files, request, upload, options, low_vram))
    if result is not None:
        path, data = result
        st.video(data)
        st.success(f"Saved {path}")


def _sample(
    files: Any, request: VideoRequest, upload: Any, options: DemoOptions, low_vram: bool
) -> tuple[str, bytes]:
    check_video_request(request)
    image = input_tensor(upload, request)
    key = (
        str(files.config),
        str(files.ckpt),
        options.device,
        low_vram,
        request.frames,
        request.steps,
    )
    model = cached_model("video", key, lambda: load_model(files, request, options.device, low_vram))
    frames = generate_video(model, image.to(model_device(model)), request)
    folder = os.path.join(str(options.outputs), "vid", request.version, "samples")
    path = save_outputs(frames, folder, request.fps, image)
    if request.polars_rad is not None:
        picture = draw_orbit(request.polars_rad, request.azimuths_rad)
        write_new_file(
            lambda tmp: picture.save(tmp, format="PNG"),
            [os.path.join(folder, f"{path.stem}_orbit.png")],
        )
    return str(path), path.read_bytes()
