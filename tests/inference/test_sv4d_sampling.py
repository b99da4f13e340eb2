"""SV4D / SV4D 2.0 sampling parts: camera values against the original's formulas, window
layout, the releases' samplers, SV4D's step-by-step dense pass against k-diffusion's
Euler sampler, and window conditioning on a toy SV4D 2.0 engine (closed-form camera
embeddings, what the unconditional pass zeroes)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import pathlib
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from sgm.inference import sv4d
from sgm.inference.sv4d_sampling import Window

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "tests" / "configs"


def test_sv4d_cameras_equal_the_originals_for_its_default_orbit():
    polars, azimuths = sv4d.orbit_rad(21, 10.0, None)
    views = np.array(sv4d.SV4D_SUBSAMPLED_VIEWS[1:])
    # the original: polars[views], (azimuths[views] - azimuths[0]) mod 2 pi, per frame
    want_p = np.tile(polars[views], 5)
    want_a = np.tile((azimuths[views] - azimuths[0]) % (2 * np.pi), 5)
    got_p, got_a = sv4d.sv4d_cameras(polars, azimuths, 5)
    assert got_p.shape == got_a.shape == (40,)
    np.testing.assert_allclose(got_p, want_p, atol=1e-12)
    np.testing.assert_allclose(got_a, want_a, atol=1e-12)
    # view j shows the orbit at 360 * views[j] / 21 degrees from the input view
    np.testing.assert_allclose(np.rad2deg(got_a[:8]), 360 * views / 21, atol=1e-9)
    np.testing.assert_allclose(got_p, np.deg2rad(80.0), atol=1e-12)


def test_sv4d_cameras_follow_the_views_shown_on_custom_orbits():
    elevations = np.linspace(0, 20, 21)
    azimuths_deg = np.linspace(0, 340, 21) ** 1.01 % 360
    polars, azimuths = sv4d.orbit_rad(21, elevations.tolist(), azimuths_deg.tolist())
    got_p, got_a = sv4d.sv4d_cameras(polars, azimuths, 1)
    shown = np.array(sv4d.SV4D_SUBSAMPLED_VIEWS[1:]) - 1  # rolled index s = orbit s - 1
    np.testing.assert_allclose(got_p, np.deg2rad(90 - elevations[shown]))
    np.testing.assert_allclose(got_a, np.deg2rad((azimuths_deg[shown] - azimuths_deg[-1]) % 360))


def test_sv4d2_cameras_are_relative_to_the_input_view():
    spec = sv4d.SPECS["sv4d2"]
    polars, azimuths = sv4d.orbit_rad(5, [0, 10, 20, 30, 40], spec.azimuths_deg)
    got_p, got_a = sv4d.sv4d2_cameras(polars, azimuths, spec.n_time)
    assert got_p.shape == (48,)
    np.testing.assert_allclose(got_a[:4], np.deg2rad([60, 120, 180, 240]))
    # (p - p0 + pi/2) mod 2 pi with p = 90 - elevation
    np.testing.assert_allclose(got_p[:4], np.deg2rad([80, 70, 60, 50]))
    np.testing.assert_allclose(got_p[4:8], got_p[:4])
    with pytest.raises(Exception, match="azimuths_deg needs 1 value or 9"):
        sv4d.orbit_rad(9, 0.0, [0, 30])


def test_windows_cover_every_frame():
    assert sv4d.window_starts(sv4d.SPECS["sv4d2"], 21) == [0, 9]
    assert sv4d.window_starts(sv4d.SPECS["sv4d2"], 24) == [0, 12]
    assert sv4d.window_starts(sv4d.SPECS["sv4d2"], 12) == [0]
    assert sv4d.window_starts(sv4d.SPECS["sv4d2_8views"], 21) == [0, 4, 8, 12, 16]
    assert sv4d.window_starts(sv4d.SPECS["sv4d2_8views"], 23) == [0, 4, 8, 12, 16, 18]
    with pytest.raises(Exception, match="at least 12 frames"):
        sv4d.window_starts(sv4d.SPECS["sv4d2"], 11)


@pytest.mark.parametrize(
    "name,guider,low,high",
    [
        ("sv4d", "SpatiotemporalPredictionGuider", 1.0, 2.0),
        ("sv4d2", "LinearPredictionGuider", 1.0, 2.0),
        ("sv4d2_8views", "SpatiotemporalPredictionGuider", 1.5, 2.5),
    ],
)
def test_release_samplers(name, guider, low, high):
    spec = sv4d.SPECS[name]
    sampler = sv4d.build_sampler(spec, 7)
    assert type(sampler).__name__ == "EulerEDMSampler" and sampler.num_steps == 7
    assert type(sampler.guider).__name__ == guider
    assert sampler.guider.additional_cond_keys == ["cond_view", "cond_motion"]
    scale = sampler.guider.scale.flatten()
    assert scale.numel() == spec.n_frames
    assert scale.min().item() == pytest.approx(low) and scale.max().item() <= high + 1e-6
    sigmas = sampler.discretization(7)
    # Karras et al. (2022), eq. 5 with sigma 0.002 .. 700, rho 7
    ramp = torch.linspace(0, 1, 7, dtype=torch.float64)
    rho = 7.0
    karras = (700 ** (1 / rho) + ramp * (0.002 ** (1 / rho) - 700 ** (1 / rho))) ** rho
    torch.testing.assert_close(sigmas[:-1].double(), karras, rtol=1e-5, atol=1e-7)
    assert sigmas[-1] == 0


@pytest.fixture(scope="module")
def K():
    """k_diffusion.sampling loaded by path (the package __init__ needs extra packages)."""
    root = pathlib.Path(importlib.metadata.distribution("k-diffusion").locate_file("k_diffusion"))
    saved = {k: sys.modules.get(k) for k in ("k_diffusion", "torchdiffeq")}
    package = types.ModuleType("k_diffusion")
    package.__path__ = [str(root)]
    sys.modules["k_diffusion"] = package
    if importlib.util.find_spec("torchdiffeq") is None:
        stub = types.ModuleType("torchdiffeq")
        stub.odeint = None
        sys.modules["torchdiffeq"] = stub
    spec = importlib.util.spec_from_file_location("k_diffusion.sampling", root / "sampling.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    for k, v in saved.items():
        if v is None:
            sys.modules.pop(k, None)
        else:
            sys.modules[k] = v
    sys.modules.pop("k_diffusion.utils", None)


def gaussian_mixture_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Ideal denoiser of a per-entry 2-component Gaussian mixture (nonlinear in x)."""
    w, mu, s = torch.tensor([0.3, 0.7]), torch.tensor([-1.0, 2.0]), torch.tensor([0.4, 0.6])
    sigma = sigma.reshape(-1, *([1] * (x.ndim - 1)))[..., None]
    var = s**2 + sigma**2
    xk = x[..., None]
    logits = torch.log(w) - 0.5 * (xk - mu) ** 2 / var - 0.5 * torch.log(var)
    r = torch.softmax(logits, dim=-1)
    posterior_mean = mu + s**2 / var * (xk - mu)
    return (r * posterior_mean).sum(-1)


def test_dense_pass_is_euler_per_entry_and_alternates_conditioning(K):
    spec = sv4d.Spec("toy", 5, 2, "SpatiotemporalPredictionGuider", 2.0, 1.0)
    sampler = sv4d.build_sampler(spec, 6)
    frames, views = [2, 3, 4, 5, 6], [1, 2]
    latents = torch.randn(9, 3, 4, 2, 2, dtype=torch.float64)
    start = latents.clone()
    seen = []

    def denoise(net, x, sigma, cond, **kwargs):
        seen.append(cond["vector"][-1, 0].item())  # the conditional half's marker
        return gaussian_mixture_denoiser(x, sigma)

    model = types.SimpleNamespace(model=None, denoiser=denoise)
    n = len(frames) * len(views)
    forward = Window({"vector": torch.ones(n, 1)}, {"vector": torch.zeros(n, 1)}, {})
    backward = Window({"vector": 2 * torch.ones(n, 1)}, {"vector": torch.zeros(n, 1)}, {})
    sv4d.sample_dense_window(model, sampler, latents, frames, views, forward, backward, "cpu")

    assert seen == [2.0, 1.0, 2.0, 1.0, 2.0, 1.0]  # backward on even steps
    sigmas = sampler.discretization(6).double()
    x0 = start[frames][:, views].double() * torch.sqrt(1 + sigmas[0] ** 2)
    expected = K.sample_euler(
        lambda x, s: gaussian_mixture_denoiser(x.flatten(0, 1), s.repeat_interleave(2)).view_as(x),
        x0,
        sigmas,
        disable=True,
    )
    # float32 sigmas on our side, float64 arithmetic on both
    torch.testing.assert_close(latents[frames][:, views], expected, rtol=1e-5, atol=1e-5)
    untouched = torch.ones(9, 3, dtype=torch.bool)
    untouched[torch.tensor(frames)[:, None], torch.tensor(views)[None]] = False
    assert torch.equal(latents[untouched], start[untouched])


@pytest.fixture(scope="module")
def tiny_sv4d2(video_arch_dir):
    from sgm.inference.video import load_video_model

    torch.manual_seed(0)
    return load_video_model(CONFIGS / "sv4d2_tiny.yaml", None, "cpu")


def _camera_embedding(values: np.ndarray, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float64) / half)
    args = torch.tensor(values, dtype=torch.float64)[:, None] * freqs
    return torch.cat([args.cos(), args.sin()], dim=1).float()


@pytest.mark.parametrize("multi_view", [True, False])
def test_window_conditioning(tiny_sv4d2, multi_view):
    spec = sv4d.SPECS["sv4d2"]
    t, v = spec.n_time, spec.n_view
    motion = torch.rand(t, 3, 64, 64) * 2 - 1
    views = torch.rand(v, 3, 64, 64) * 2 - 1
    polars, azimuths = sv4d.orbit_rad(v + 1, [0, 10, 20, 30, 40], spec.azimuths_deg)
    cams = sv4d.sv4d2_cameras(polars, azimuths, t)
    window = sv4d.condition(tiny_sv4d2, motion, views, *cams, "cpu", multi_view=multi_view)
    c, uc, extra = window.c, window.uc, window.extra
    n = t * v
    assert c["vector"].shape == (n, 128) and c["concat"].shape == (n, 4, 8, 8)
    assert c["crossattn"].shape == (1, t, 32)
    assert c["cond_view"].shape == (v, 4, 8, 8) and c["cond_motion"].shape == (t, 4, 8, 8)
    # vector = [noise level of the conditioning frames (32), polar (48), azimuth (48)]
    torch.testing.assert_close(
        c["vector"][:, 32:80], _camera_embedding(cams[0], 48), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        c["vector"][:, 80:], _camera_embedding(cams[1], 48), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(uc["vector"][:, 32:], c["vector"][:, 32:])
    for key in ("concat", "crossattn", "cond_view", "cond_motion"):
        assert not uc[key].any(), key
    assert not uc["vector"][:, :32].any()
    # every view of a frame gets that frame's latent; the noise level 0 embeds as
    # cos 0 = 1, sin 0 = 0
    per_frame = c["concat"].view(t, v, 4, 8, 8)
    torch.testing.assert_close(
        per_frame[:, 1:], per_frame[:, :1].expand(-1, v - 1, -1, -1, -1), atol=2e-4, rtol=0
    )  # batched convolutions: last bits
    torch.testing.assert_close(c["vector"][:, :32], _camera_embedding(np.zeros(n), 32))
    assert extra["num_video_frames"] == n
    assert extra["image_only_indicator"].shape == (2, n)
    assert bool(c["cond_view"].any()) == multi_view
    assert (extra["image_only_indicator"] == float(multi_view)).all()


def test_encoding_t_and_decoding_t_bound_the_chunks(tiny_sv4d2, monkeypatch):
    """Conditioning frames are encoded ``encoding_t`` at a time, latents decoded
    ``decoding_t`` at a time; the model's own settings come back afterwards."""
    from sgm.inference.sv4d_sampling import encoding_chunks

    spec = sv4d.SPECS["sv4d2"]
    encoded, decoded = [], []
    for embedder in tiny_sv4d2.conditioner.embedders:
        if hasattr(embedder, "en_and_decode_n_samples_a_time"):
            encode = embedder.encoder.encode
            monkeypatch.setattr(
                embedder.encoder, "encode", lambda x, f=encode: encoded.append(len(x)) or f(x)
            )
    decode = tiny_sv4d2.first_stage_model.decode
    monkeypatch.setattr(
        tiny_sv4d2.first_stage_model,
        "decode",
        lambda z, f=decode, **kw: decoded.append(len(z)) or f(z, **kw),
    )
    saved = [
        e.en_and_decode_n_samples_a_time
        for e in tiny_sv4d2.conditioner.embedders
        if hasattr(e, "en_and_decode_n_samples_a_time")
    ]
    motion, views = torch.zeros(spec.n_time, 3, 64, 64), torch.zeros(spec.n_view, 3, 64, 64)
    cams = (np.zeros(spec.n_frames), np.zeros(spec.n_frames))
    with encoding_chunks(tiny_sv4d2, 5):
        sv4d.condition(tiny_sv4d2, motion, views, *cams, "cpu")
    # 48 conditioning frames, 4 views, 12 motion frames, 5 at a time; for c only (uc
    # zeroes these embedders, so they are not run again)
    assert encoded == [5] * 9 + [3] + [4] + [5, 5, 2]
    assert [
        e.en_and_decode_n_samples_a_time
        for e in tiny_sv4d2.conditioner.embedders
        if hasattr(e, "en_and_decode_n_samples_a_time")
    ] == saved
    images = sv4d.decode(tiny_sv4d2, torch.zeros(11, 4, 8, 8), 4)
    assert decoded == [4, 4, 3] and images.shape == (11, 3, 64, 64)
    assert images.min() >= -1 and images.max() <= 1


def test_sv3d_reference_puts_the_input_view_first_and_routes_cameras(tiny_sv4d2):
    """SV3D_p's orbit of a frame: 21 views, the input view first (rolled from last),
    the camera values of :func:`orbit_rad` in its vector (closed-form embedding)."""
    from sgm.inference.helpers import get_unique_embedder_keys_from_conditioner
    from sgm.inference.video import build_value_dict, build_video_batch, load_video_model

    torch.manual_seed(0)
    sv3d = load_video_model(CONFIGS / "sv3d_p_tiny.yaml", None, "cpu", 21, 1)
    image = torch.rand(3, 64, 64) * 2 - 1
    polars, azimuths = sv4d.orbit_rad(21, np.linspace(0, 20, 21).tolist(), None)
    views = sv4d.sv3d_reference(
        sv3d, image, polars, azimuths, torch.Generator().manual_seed(0), decoding_t=7
    )
    assert views.shape == (21, 3, 64, 64) and views.min() >= -1 and views.max() <= 1
    torch.testing.assert_close(views[0], image.clamp(-1, 1), atol=1e-6, rtol=0)
    values = build_value_dict(
        image[None], 1e-5, polars_rad=polars.tolist(), azimuths_rad=azimuths.tolist()
    )
    keys = get_unique_embedder_keys_from_conditioner(sv3d.conditioner)
    vector = sv3d.conditioner(build_video_batch(keys, values, 21, "cpu"))["vector"]
    torch.testing.assert_close(vector[:, 32:80], _camera_embedding(polars, 48), atol=1e-6, rtol=0)
    torch.testing.assert_close(vector[:, 80:], _camera_embedding(azimuths, 48), atol=1e-6, rtol=0)
