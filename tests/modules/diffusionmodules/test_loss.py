"""StandardDiffusionLoss vs hand-computed losses, offset noise and key forwarding."""

import sys
import types

import pytest
import torch
from omegaconf import ListConfig
from torch import nn

from sgm.modules.diffusionmodules.denoiser import Denoiser
from sgm.modules.diffusionmodules.loss import StandardDiffusionLoss

P = "sgm.modules.diffusionmodules."
# EDMSampling with p_std = 0 gives the fixed level sigma = exp(p_mean).
FIXED_SIGMA = {
    "target": P + "sigma_sampling.EDMSampling",
    "params": {"p_mean": 0.0, "p_std": 0.0},
}


class ConstantNet(nn.Module):
    """Network returning a constant, recording what it receives."""

    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, x, c_noise, cond, **kwargs):
        self.seen = (x, c_noise, cond, kwargs)
        return torch.full_like(x, self.value)


def _loss(weighting="UnitWeighting", **kwargs):
    return StandardDiffusionLoss(
        FIXED_SIGMA, {"target": P + "loss_weighting." + weighting}, **kwargs
    )


def test_l2_edm_loss_by_hand():
    """EDM scaling (sd = 0.5), net output 0.2: D = c_skip (x + n) + 0.2 c_out."""
    x = torch.randn(3, 2, 4, 4)
    torch.manual_seed(7)
    torch.randn(3)  # the sigma sampler's draw
    noise = torch.randn_like(x)
    c_skip, c_out = 0.25 / 1.25, 0.5 / 1.25**0.5
    weight = 1.25 / 0.25  # (sigma^2 + sd^2) / (sigma sd)^2
    d = c_skip * (x + noise) + 0.2 * c_out
    expected = (weight * (d - x) ** 2).mean(dim=(1, 2, 3))
    torch.manual_seed(7)
    loss = _loss("EDMWeighting")(
        ConstantNet(0.2),
        Denoiser({"target": P + "denoiser_scaling.EDMScaling"}),
        lambda batch: {},
        x,
        {},
    )
    assert loss.shape == (3,)
    torch.testing.assert_close(loss, expected)


def test_l1_loss_by_hand():
    """Eps scaling, net output 0: D = x + sigma n exactly; the L1 loss is mean |n|."""
    x = torch.randn(2, 3, 5)
    torch.manual_seed(1)
    torch.randn(2)
    noise = torch.randn_like(x)
    torch.manual_seed(1)
    loss = _loss(loss_type="l1")(
        ConstantNet(0.0),
        Denoiser({"target": P + "denoiser_scaling.EpsScaling"}),
        lambda batch: {},
        x,
        {},
    )
    torch.testing.assert_close(loss, noise.abs().mean(dim=(1, 2)))


def _noise_seen(loss_fn, x):
    net = ConstantNet(0.0)
    loss_fn(
        net,
        Denoiser({"target": P + "denoiser_scaling.EpsScaling"}),
        lambda b: {},
        x,
        {},
    )
    c_in = 1 / 2**0.5  # sigma = 1
    return net.seen[0] / c_in - x  # the noise actually added (sigma = 1)


def test_offset_noise_is_constant_per_sample_and_channel():
    x = torch.zeros(4, 3, 8, 8)
    torch.manual_seed(2)
    torch.randn(4)
    base = torch.randn_like(x)
    offset = torch.randn(4, 3)
    torch.manual_seed(2)
    noise = _noise_seen(_loss(offset_noise_level=0.1), x)
    torch.testing.assert_close(noise, base + 0.1 * offset[:, :, None, None])
    torch.manual_seed(2)
    torch.testing.assert_close(_noise_seen(_loss(), x), base)


def test_offset_noise_for_video_is_shared_over_frames():
    x = torch.zeros(2, 5, 3, 4, 4)  # (b, t, c, h, w)
    torch.manual_seed(3)
    torch.randn(2)
    base = torch.randn_like(x)
    offset = torch.randn(2, 1, 3)
    torch.manual_seed(3)
    noise = _noise_seen(_loss(offset_noise_level=0.5), x)
    torch.testing.assert_close(noise, base + 0.5 * offset[..., None, None])


def test_batch2model_keys_forwarded_and_conditioner_used():
    net = ConstantNet(0.0)
    batch = {
        "image_only_indicator": torch.ones(2, 3),
        "num_video_frames": 3,
        "txt": ["a", "b"],
    }
    loss_fn = _loss(
        batch2model_keys=ListConfig(["image_only_indicator", "num_video_frames", "absent"])
    )
    loss_fn(
        net,
        Denoiser({"target": P + "denoiser_scaling.EpsScaling"}),
        lambda b: {"crossattn": len(b["txt"])},
        torch.zeros(2, 1, 2, 2),
        batch,
    )
    assert set(net.seen[3]) == {"image_only_indicator", "num_video_frames"}
    assert net.seen[3]["image_only_indicator"] is batch["image_only_indicator"]
    assert net.seen[2] == {"crossattn": 2}
    assert _loss(batch2model_keys="a").batch2model_keys == {"a"}


def test_bad_loss_type():
    with pytest.raises(ValueError, match="loss_type='l3'"):
        _loss(loss_type="l3")


def test_lpips_loss_built_lazily(monkeypatch):
    class FakeLPIPS(nn.Module):
        def forward(self, a, b):
            return ((a - b) ** 2).mean(dim=(1, 2, 3), keepdim=True)

    fake = types.ModuleType("lpips")
    fake.LPIPS = FakeLPIPS
    monkeypatch.setitem(sys.modules, "sgm.modules.autoencoding.lpips.loss.lpips", fake)
    loss_fn = _loss(loss_type="lpips")
    assert isinstance(loss_fn.lpips, FakeLPIPS) and not loss_fn.lpips.training
    out = loss_fn.get_loss(torch.ones(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), torch.ones(2, 1, 1, 1))
    torch.testing.assert_close(out, torch.ones(2))
