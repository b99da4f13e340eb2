"""Shared network helpers against closed forms and torch references."""

import math

import numpy as np
import torch

from sgm.modules.diffusionmodules.util import (
    AlphaBlender,
    GroupNorm32,
    make_beta_schedule,
    timestep_embedding,
)


def test_timestep_embedding_closed_form():
    t = torch.tensor([0.0, 3.0, 999.0])
    emb = timestep_embedding(t, 6)
    freqs = [math.exp(-math.log(10000) * i / 3) for i in range(3)]
    expected = [
        [math.cos(s * f) for f in freqs] + [math.sin(s * f) for f in freqs] for s in t.tolist()
    ]
    assert torch.allclose(emb, torch.tensor(expected), atol=1e-4)
    assert timestep_embedding(t, 7).shape == (3, 7)


def test_linear_beta_schedule_is_sd_schedule():
    betas = make_beta_schedule("linear", 1000, 0.00085, 0.012)
    assert betas.dtype == np.float64
    assert np.isclose(betas[0], 0.00085) and np.isclose(betas[-1], 0.012)
    alphas_cumprod = np.cumprod(1 - betas)
    sigmas = np.sqrt((1 - alphas_cumprod) / alphas_cumprod)
    assert abs(sigmas[0] - 0.0292) < 1e-4 and abs(sigmas[-1] - 14.6146) < 1e-3


def test_groupnorm32_matches_torch_and_keeps_low_precision_models_working():
    norm = GroupNorm32(32, 64)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = torch.randn(2, 64, 4, 4)
    reference = torch.nn.functional.group_norm(x, 32, norm.weight, norm.bias, norm.eps)
    assert torch.allclose(norm(x), reference, atol=1e-5)
    half = norm.to(torch.bfloat16)
    out = half(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), reference, atol=0.1)


def test_alpha_blender_strategies():
    x_s, x_t = torch.full((4, 1, 1), 2.0), torch.zeros(4, 1, 1)
    fixed = AlphaBlender(0.25, "fixed")
    assert torch.allclose(fixed(x_s, x_t), torch.full((4, 1, 1), 0.5))
    learned = AlphaBlender(0.0, "learned")
    assert torch.allclose(learned(x_s, x_t), torch.full((4, 1, 1), 1.0))
    with_images = AlphaBlender(0.0, "learned_with_images")
    indicator = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    out = with_images(x_s, x_t, indicator).flatten()
    assert torch.allclose(out, torch.tensor([1.0, 2.0, 1.0, 1.0]))
