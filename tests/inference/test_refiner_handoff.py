"""Base -> refiner hand-off: the base stops at the level where the refiner starts, so the
two stages together visit the schedule's levels once each, and no noise is added between."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sgm.errors import InputError
from sgm.inference.api import SamplingParams, SamplingPipeline, text_to_image_refined
from sgm.inference.helpers import (
    Img2ImgDiscretizationWrapper,
    Txt2NoisyDiscretizationWrapper,
)
from sgm.modules.diffusionmodules.discretizer import LegacyDDPMDiscretization


def ddpm_sigmas(n: int) -> np.ndarray:
    """Closed form of the SD schedule at ``n`` steps (descending, 0 appended): ``n``
    timesteps evenly spaced down from 999 (floored), sigma_t = sqrt((1 - abar_t) / abar_t)."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    abar = np.cumprod(1.0 - betas)
    t = np.linspace(999, 0, n, endpoint=False).astype(int)
    return np.append(np.sqrt((1 - abar[t]) / abar[t]), 0.0)


@pytest.mark.parametrize("steps", [4, 10, 40])
@pytest.mark.parametrize("strength", [0.05, 0.15, 0.3, 0.5, 1.0])
def test_base_stops_where_the_refiner_starts(steps, strength):
    disc = LegacyDDPMDiscretization()
    full = ddpm_sigmas(steps)
    base = Txt2NoisyDiscretizationWrapper(disc, strength=strength, original_steps=steps)(steps)
    refiner = Img2ImgDiscretizationWrapper(disc, strength=strength)(steps)
    kept = max(int(strength * (steps + 1)), 1)  # what the refiner keeps (closed form)
    np.testing.assert_allclose(refiner.numpy(), full[steps + 1 - kept :], rtol=1e-5)
    np.testing.assert_allclose(base.numpy(), full[: steps + 2 - kept], rtol=1e-5)
    assert float(base[-1]) == pytest.approx(float(refiner[0]), rel=1e-6)
    # together: every level of the schedule once (the hand-off level ends one, starts the other)
    joined = torch.cat([base[:-1], refiner])
    np.testing.assert_allclose(joined.numpy(), full, rtol=1e-5)


def test_zero_strength_keeps_the_whole_schedule_and_bad_strength_raises():
    disc = LegacyDDPMDiscretization()
    torch.testing.assert_close(Txt2NoisyDiscretizationWrapper(disc)(7), disc(7))
    for bad in (-0.1, 1.5):
        with pytest.raises(InputError, match="strength"):
            Txt2NoisyDiscretizationWrapper(disc, strength=bad)


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory, tiny_image_clip_dir):
    from builders import write_tiny_model

    folder = tmp_path_factory.mktemp("handoff")
    clip = tiny_image_clip_dir
    made = [
        write_tiny_model(kind, clip, folder, f"{kind}.safetensors", seed=i)
        for i, kind in enumerate(("sdxl_base", "sdxl_refiner"))
    ]
    base, refiner = (
        SamplingPipeline(config=str(config), ckpt=ckpt, device="cpu") for config, ckpt in made
    )
    assert not base.specs.is_legacy and refiner.specs.is_legacy
    return base, refiner


def _record(pipeline, log, name, monkeypatch):
    original = pipeline.model.denoiser.forward

    def forward(network, x, sigma, cond, **kwargs):
        log.append((name, x.detach().clone(), sigma.detach().clone()))
        return original(network, x, sigma, cond, **kwargs)

    monkeypatch.setattr(pipeline.model.denoiser, "forward", forward)


def test_text_to_image_refined_visits_each_level_once(pipelines, monkeypatch):
    base, refiner = pipelines
    log: list = []
    _record(base, log, "base", monkeypatch)
    _record(refiner, log, "refiner", monkeypatch)
    steps, strength = 6, 0.3
    params = SamplingParams(
        width=64, height=64, orig_width=64, orig_height=64, steps=steps, scale=4.0
    )
    # the base's own (noisy) latents, for the check below; same seed as the run
    _, noisy = base.text_to_image(
        params, "a red barn", return_latents=True, seed=3, refiner_strength=strength
    )
    log.clear()
    images, latents = text_to_image_refined(
        base,
        refiner,
        params,
        "a red barn",
        seed=3,
        refiner_strength=strength,
        return_latents=True,
    )
    assert images.shape == (1, 3, 64, 64) and latents.shape == (1, 4, 8, 8)
    names = [name for name, _, _ in log]
    full = ddpm_sigmas(steps)
    kept = int(strength * (steps + 1))
    assert names == ["base"] * (steps + 1 - kept) + ["refiner"] * (kept - 1)
    visited = [float(sigma[0]) for _, _, sigma in log]
    np.testing.assert_allclose(visited, full[:-1], rtol=1e-5)
    # no noise between the stages: the refiner's first input is the base's output latents
    first = next(x for name, x, _ in log if name == "refiner")
    torch.testing.assert_close(first[:1], noisy, rtol=1e-5, atol=1e-5)
    assert float(noisy.std()) > 0.5 * full[steps + 1 - kept]  # still noisy at that level


def test_refiner_strength_must_be_in_unit_interval(pipelines):
    base, refiner = pipelines
    params = SamplingParams(width=64, height=64, steps=2)
    with pytest.raises(InputError, match="refiner strength"):
        text_to_image_refined(base, refiner, params, "x", refiner_strength=0.0)
