"""Turbo sampling: sigma subset of the 1000-step DDPM schedule (closed form), NumPy-seeded
noise, no guidance, and the numbers of k-diffusion's Euler ancestral sampler."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import pathlib
import sys
import types

import numpy as np
import pytest
import torch

from sgm.errors import CheckpointError, InputError
from sgm.inference.api import ModelArchitecture, SamplingParams, SamplingPipeline, model_specs
from sgm.inference.turbo import (
    SeededNoise,
    SubstepSampler,
    check_turbo_steps,
    sample_turbo,
    seeded_randn,
    turbo_sampler,
)
from sgm.util import get_configs_path

DATA_STD = 0.7


def ddpm_sigmas_closed_form() -> np.ndarray:
    """SD's schedule: betas linear in sqrt between 0.00085 and 0.012 over 1000 steps,
    sigma_t = sqrt((1 - abar_t) / abar_t), listed from t = 999 down to 0, then 0."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    abar = np.cumprod(1.0 - betas)
    return np.append(np.sqrt((1 - abar) / abar)[::-1], 0.0)


def gaussian_denoiser(x, sigma, cond=None):
    """Ideal denoiser of N(0, DATA_STD^2) data: E[x0 | x] = x s^2 / (s^2 + sigma^2)."""
    sigma = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    return x * DATA_STD**2 / (DATA_STD**2 + sigma**2)


@pytest.fixture(scope="module")
def K():
    """k_diffusion.sampling loaded by path (its package __init__ needs extra packages)."""
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
    for key, value in saved.items():
        if value is None:
            sys.modules.pop(key, None)
        else:
            sys.modules[key] = value
    sys.modules.pop("k_diffusion.utils", None)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_sigmas_are_the_schedule_levels_0_100_200_300(n):
    sampler = turbo_sampler(n, seed=0, verbose=False)
    x = torch.zeros(1, 4, 2, 2)
    _, _, sigmas, num_sigmas, _, _ = sampler.prepare_sampling_loop(x, {})
    expected = ddpm_sigmas_closed_form()[[0, 100, 200, 300][:n] + [1000]]
    np.testing.assert_allclose(sigmas.numpy(), expected, rtol=1e-5)
    assert num_sigmas == n + 1
    assert abs(float(sigmas[0]) - 14.6146) < 1e-3  # SD's published sigma_max


def test_seeded_noise_is_numpy_randomstate_one_seed_per_draw():
    shape = (2, 4, 3, 5)
    expected = np.random.RandomState(7).randn(*shape).astype(np.float32)
    np.testing.assert_array_equal(seeded_randn(shape, 7).numpy(), expected)
    noise = SeededNoise(7)
    x = torch.zeros(shape)
    for seed in (8, 9, 10):
        np.testing.assert_array_equal(
            noise(x).numpy(), np.random.RandomState(seed).randn(*shape).astype(np.float32)
        )


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_matches_k_diffusion_euler_ancestral(K, n):
    """Same sigmas, same noise, same denoiser: k-diffusion starts from the scaled noise."""
    seed, shape = 5, (2, 3, 8, 8)
    sampler = turbo_sampler(n, seed=seed, verbose=False)
    start = seeded_randn(shape, seed)
    ours = sampler(gaussian_denoiser, start, cond={})

    sigmas = torch.from_numpy(ddpm_sigmas_closed_form()[[0, 100, 200, 300][:n] + [1000]])
    sigmas = sigmas.float()
    draws = SeededNoise(seed)
    theirs = K.sample_euler_ancestral(
        lambda x, s: gaussian_denoiser(x, s * x.new_ones(x.shape[0])),
        seeded_randn(shape, seed) * torch.sqrt(1 + sigmas[0] ** 2),
        sigmas,
        eta=1.0,
        noise_sampler=lambda s, t: draws(start),
        disable=True,
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    if n == 1:  # one ancestral step to sigma 0 lands on the denoised estimate
        x0 = start * torch.sqrt(1 + sigmas[0] ** 2)
        torch.testing.assert_close(ours, gaussian_denoiser(x0, sigmas[:1]), rtol=1e-5, atol=1e-5)


def test_no_guidance_unconditional_input_is_ignored():
    calls = []

    def denoiser(x, sigma, cond):
        calls.append((x.shape[0], cond["tag"]))
        return gaussian_denoiser(x, sigma)

    sampler = turbo_sampler(3, seed=1, verbose=False)
    sampler(denoiser, torch.randn(2, 4, 4, 4), cond={"tag": "c"}, uc={"tag": "uc"})
    assert calls == [(2, "c")] * 3  # batch not doubled, never the unconditional input
    assert type(sampler.guider).__name__ == "IdentityGuider"
    assert isinstance(sampler, SubstepSampler) and sampler.eta == 1.0


@pytest.mark.parametrize("bad", [0, 5, 50, -1, 2.5])
def test_more_than_four_steps_is_an_input_error(bad):
    with pytest.raises(InputError, match="1 to 4 steps"):
        check_turbo_steps(bad)
    with pytest.raises(InputError):
        turbo_sampler(bad, seed=0)


def test_turbo_architectures_use_released_names_and_configs(tmp_path):
    xl, sd = model_specs[ModelArchitecture.SDXL_TURBO], model_specs[ModelArchitecture.SD_TURBO]
    assert (xl.config, xl.ckpt, xl.width, xl.height) == (
        "sd_xl_base.yaml",
        "sd_xl_turbo_1.0.safetensors",
        512,
        512,
    )
    assert (sd.config, sd.ckpt, sd.width, sd.height) == (
        "sd_2_1.yaml",
        "sd_turbo.safetensors",
        512,
        512,
    )
    assert not xl.is_guided and not sd.is_guided
    assert not xl.is_legacy and not sd.is_legacy
    for spec in (xl, sd):
        assert (pathlib.Path(get_configs_path()) / "inference" / spec.config).is_file()
    with pytest.raises(CheckpointError, match="sd_turbo.safetensors"):
        SamplingPipeline(ModelArchitecture.SD_TURBO, model_path=tmp_path, device="cpu")


@pytest.fixture(scope="module")
def turbo_pipeline(tmp_path_factory, tiny_image_clip_dir):
    from dataclasses import replace

    from builders import write_tiny_model

    folder = tmp_path_factory.mktemp("turbo")
    clip = tiny_image_clip_dir
    config, ckpt = write_tiny_model("sdxl_base", clip, folder, "sd_xl_turbo_1.0.safetensors")
    spec = replace(model_specs[ModelArchitecture.SDXL_TURBO], width=64, height=64)
    return SamplingPipeline(config=str(config), ckpt=ckpt, spec=spec, device="cpu")


def test_pipeline_turbo_start_noise_and_levels(turbo_pipeline, monkeypatch):
    seen = []
    original = turbo_pipeline.model.denoiser.forward

    def forward(network, x, sigma, cond, **kwargs):
        seen.append((x.detach().clone(), sigma.detach().clone()))
        return original(network, x, sigma, cond, **kwargs)

    monkeypatch.setattr(turbo_pipeline.model.denoiser, "forward", forward)
    assert turbo_pipeline.is_turbo
    params = SamplingParams(width=64, height=64, steps=2, orig_width=64, orig_height=64)
    out, latents = turbo_pipeline.text_to_image(
        params, "a fox", samples=2, seed=11, return_latents=True
    )
    assert out.shape == (2, 3, 64, 64) and latents.shape == (2, 4, 8, 8)
    closed = ddpm_sigmas_closed_form()
    assert len(seen) == 2 and all(s.shape == (2,) for _, s in seen)  # no CFG batch
    np.testing.assert_allclose([float(s[0]) for _, s in seen], closed[[0, 100]], rtol=1e-5)
    start = seeded_randn((2, 4, 8, 8), 11) * np.sqrt(1 + closed[0] ** 2)
    torch.testing.assert_close(seen[0][0], start.float(), rtol=1e-5, atol=1e-5)
    again = sample_turbo(
        turbo_pipeline.model, "a fox", 2, 64, 64, seed=11, num_samples=2, verbose=False
    )
    torch.testing.assert_close(out, again, rtol=0, atol=0)
    with pytest.raises(InputError, match="1 to 4 steps"):
        turbo_pipeline.text_to_image(SamplingParams(width=64, height=64, steps=5), "a fox")
