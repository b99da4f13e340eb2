"""The Streamlit video page on a tiny SVD-structured engine, and SV3D_p orbits against
their closed forms."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from demo_support import REPO

PAGE = str(REPO / "scripts" / "demo" / "video_sampling.py")


def _app(monkeypatch, checkpoints, configs=None, outputs=None):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    st.cache_resource.clear()
    for name in ("SGM_DEMO_CONFIGS", "SGM_DEMO_CONFIG", "SGM_DEMO_CKPT", "SGM_DEMO_OUTPUTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SGM_DEMO_CHECKPOINTS", str(checkpoints))
    if configs is not None:
        monkeypatch.setenv("SGM_DEMO_CONFIGS", str(configs))
    if outputs is not None:
        monkeypatch.setenv("SGM_DEMO_OUTPUTS", str(outputs))
    monkeypatch.setenv("SGM_DEMO_DEVICE", "cpu")
    return AppTest.from_file(PAGE, default_timeout=180)


def _png_bytes(width=100, height=70) -> bytes:
    from PIL import Image

    pixels = np.random.RandomState(0).randint(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_widgets_missing_checkpoint_and_orbit(monkeypatch, tmp_path):
    at = _app(monkeypatch, tmp_path / "none").run()
    assert not at.exception
    assert at.title[0].value == "Stable Video Diffusion sampling"
    assert at.selectbox(key="version").value == "svd_xt"
    labels = {w.label for w in [*at.number_input, *at.selectbox, *at.button]}
    assert {
        "H",
        "W",
        "T (frames)",
        "Steps",
        "fps",
        "Motion bucket id",
        "cond_aug",
        "Seed",
        "Sample",
    } <= labels
    assert (
        at.number_input(key="svd_xt.T").value == 25
        and at.number_input(key="svd_xt.steps").value == 30
    )
    assert [e.value for e in at.error] == [
        f"svd_xt: checkpoint svd_xt.safetensors not found. Put it at "
        f"{tmp_path / 'none' / 'svd_xt.safetensors'} (folder set by --checkpoints / "
        "SGM_DEMO_CHECKPOINTS); nothing is downloaded."
    ]
    assert at.button(key="sample").disabled
    at.selectbox(key="version").select("sv3d_p").run()
    assert (
        at.number_input(key="sv3d_p.T").value == 21 and at.number_input(key="sv3d_p.W").value == 576
    )
    assert at.radio(key="trajectory").options == ["same elevation", "dynamic"]
    assert len(at.image) == 1  # the orbit picture
    assert "sv3d_p.safetensors not found" in at.error[0].value


def test_generation_shows_and_saves_the_video(monkeypatch, tmp_path, tiny_video_models):
    import av

    from sgm.demo.options import demo_options
    from sgm.demo.video import VideoRequest, generate_video, input_tensor, load_model, video_model
    from sgm.inference.video import save_video

    at = _app(
        monkeypatch,
        tiny_video_models["checkpoints"],
        tiny_video_models["configs"],
        tmp_path / "out",
    ).run()
    assert not at.error
    for key, value in (("H", 64), ("W", 64), ("T", 3), ("steps", 2), ("decoding_t", 2)):
        at.number_input(key=f"svd_xt.{key}").set_value(value)
    at.button(key="sample").click().run()
    assert [e.value for e in at.error] == ["no input image: upload one first"]
    at.file_uploader(key="image").set_value(("in.png", _png_bytes(), "image/png"))
    at.button(key="sample").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert len(at.get("video")) == 1
    folder = tmp_path / "out" / "vid" / "svd_xt" / "samples"
    assert sorted(p.name for p in folder.iterdir()) == ["000000.mp4", "000000.png"]
    with av.open(str(folder / "000000.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 3 and frames[0].shape == (64, 64, 3)

    # the library on the same request, written the same way, decodes to the same frames
    options = demo_options(
        environ={
            "SGM_DEMO_CHECKPOINTS": str(tiny_video_models["checkpoints"]),
            "SGM_DEMO_CONFIGS": str(tiny_video_models["configs"]),
        }
    )
    request = VideoRequest("svd_xt", 64, 64, 3, 2, decoding_t=2)
    model = load_model(video_model("svd_xt", options), request, "cpu")
    expected = generate_video(model, input_tensor(io.BytesIO(_png_bytes()), request), request)
    save_video(expected, tmp_path / "expected.mp4", fps=6)
    with av.open(str(tmp_path / "expected.mp4")) as container:
        reference = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    difference = np.abs(np.stack(frames).astype(int) - np.stack(reference).astype(int))
    assert difference.max() <= 1


def test_bad_requests_are_refused_before_sampling():
    from sgm.demo.video import VideoRequest, check_video_request
    from sgm.errors import InputError

    for field, value, culprit in (
        ("width", 100, "width 100"),
        ("frames", 0, "frames"),
        ("steps", 0, "steps"),
        ("motion_bucket_id", -1, "motion"),
        ("cond_aug", -0.1, "cond_aug"),
        ("version", "svd_9", "svd_9"),
    ):
        request = VideoRequest(**{field: value})
        with pytest.raises(InputError, match=culprit):
            check_video_request(request)
    with pytest.raises(InputError, match="elevation"):
        check_video_request(VideoRequest(version="sv3d_p", frames=21, elevation_deg=95))


def test_fixed_orbit_closed_form():
    from sgm.demo.orbit import camera_positions, orbit

    polars, azimuths = orbit(21, 10.0)
    assert np.allclose(polars, math.radians(80))
    # a full turn in 21 equal steps, the last frame at the input view (azimuth 0)
    expected = [math.radians((360 / 21 * (i + 1)) % 360) for i in range(21)]
    assert np.allclose(azimuths, expected, atol=1e-9) and azimuths[-1] == 0.0
    positions = camera_positions(polars, azimuths)
    assert np.allclose(np.linalg.norm(positions, axis=1), 1)
    assert np.allclose(positions[-1], [math.cos(math.radians(10)), 0, math.sin(math.radians(10))])


def test_dynamic_orbit_is_smooth_bounded_and_seeded():
    from sgm.demo.orbit import dynamic_elevations, orbit
    from sgm.errors import InputError

    elevations = np.array(dynamic_elevations(21, 30.0, seed=3))
    assert elevations[-1] == pytest.approx(30.0)
    assert np.all(np.abs(elevations - 30.0) <= 10.0 + 1e-9) and np.ptp(elevations) > 1.0
    assert np.abs(np.diff(elevations)).max() < 10.0  # smooth: no jumps between neighbours
    assert dynamic_elevations(21, 30.0, 3) == elevations.tolist()
    assert dynamic_elevations(21, 30.0, 4) != elevations.tolist()
    near_pole = np.array(dynamic_elevations(21, 85.0, seed=1))
    assert np.all(near_pole < 90.0) and np.all(near_pole > -90.0)
    polars, _ = orbit(21, 30.0, dynamic=True, seed=3)
    assert np.allclose(np.degrees(polars), 90.0 - elevations)
    with pytest.raises(InputError, match="elevation"):
        orbit(21, 90.0)
