"""Scalings, weightings, denoisers and sigma samplers vs their defining identities."""

import math

import pytest
import torch
from torch import nn

from sgm.modules.diffusionmodules import denoiser_weighting, loss_weighting
from sgm.modules.diffusionmodules.denoiser import Denoiser, DiscreteDenoiser
from sgm.modules.diffusionmodules.denoiser_scaling import (
    DenoiserScaling,
    EDMScaling,
    EpsScaling,
    VScaling,
    VScalingWithEDMcNoise,
)
from sgm.modules.diffusionmodules.sigma_sampling import (
    DiscreteSampling,
    EDMSampling,
    ZeroSampler,
)

P = "sgm.modules.diffusionmodules."
DDPM = {"target": P + "discretizer.LegacyDDPMDiscretization"}
SIGMAS = torch.tensor([0.01, 0.3, 1.0, 2.5, 14.6, 80.0], dtype=torch.float64)


@pytest.mark.parametrize("sd", [0.5, 1.0])
def test_edm_scaling_identities(sd):
    """Karras et al. (2022) App. B.6: unit-variance input and training target."""
    c_skip, c_out, c_in, c_noise = EDMScaling(sd)(SIGMAS)
    s2 = SIGMAS**2
    torch.testing.assert_close(c_in**2 * (s2 + sd**2), torch.ones_like(SIGMAS))
    torch.testing.assert_close(c_out**2, (1 - c_skip) ** 2 * sd**2 + c_skip**2 * s2)
    torch.testing.assert_close(c_noise, 0.25 * torch.log(SIGMAS))
    weight = loss_weighting.EDMWeighting(sd)(SIGMAS)
    torch.testing.assert_close(weight, 1 / c_out**2)  # lambda = 1 / c_out^2


def _x0_noise():
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(6, 3, dtype=torch.float64, generator=g)
    n = torch.randn(6, 3, dtype=torch.float64, generator=g)
    return x0, n


def test_eps_scaling_recovers_data_from_true_noise():
    """With the true epsilon as network output, D(x) is exactly x0."""
    x0, n = _x0_noise()
    sigma = SIGMAS[:, None]
    x = x0 + sigma * n
    c_skip, c_out, c_in, c_noise = EpsScaling()(sigma)
    torch.testing.assert_close(c_skip * x + c_out * n, x0)
    assert torch.equal(c_noise, sigma)
    vp = c_in * x  # the DDPM-space input alpha x0 + sqrt(1 - alpha^2) n
    alpha = 1 / torch.sqrt(1 + sigma**2)
    torch.testing.assert_close(vp, alpha * x0 + torch.sqrt(1 - alpha**2) * n)


@pytest.mark.parametrize("cls", [VScaling, VScalingWithEDMcNoise])
def test_v_scaling_recovers_data_from_true_velocity(cls):
    """Salimans & Ho (2022): v = alpha n - s x0 in VP space; D(x) is exactly x0."""
    x0, n = _x0_noise()
    sigma = SIGMAS[:, None]
    alpha, s = 1 / torch.sqrt(1 + sigma**2), sigma / torch.sqrt(1 + sigma**2)
    v = alpha * n - s * x0
    x = x0 + sigma * n
    c_skip, c_out, c_in, c_noise = cls()(sigma)
    torch.testing.assert_close(c_skip * x + c_out * v, x0)
    expected_noise = 0.25 * sigma.log() if cls is VScalingWithEDMcNoise else sigma
    torch.testing.assert_close(c_noise, expected_noise)
    assert isinstance(cls(), DenoiserScaling)


def test_weightings_closed_forms():
    s = SIGMAS
    torch.testing.assert_close(loss_weighting.UnitWeighting()(s), torch.ones_like(s))
    torch.testing.assert_close(loss_weighting.EpsWeighting()(s), 1 / s**2)
    torch.testing.assert_close(loss_weighting.VWeighting()(s), (s**2 + 1) / s**2)
    assert denoiser_weighting.EDMWeighting is loss_weighting.EDMWeighting


class _RecordingNet(nn.Module):
    def forward(self, x, c_noise, cond, **kwargs):
        self.seen = (x, c_noise, cond, kwargs)
        return torch.full_like(x, 2.0)


def test_denoiser_preconditioning_formula():
    net = _RecordingNet()
    den = Denoiser({"target": P + "denoiser_scaling.EDMScaling"})
    x = torch.randn(2, 3, 4, 4)
    sigma = torch.tensor([0.5, 3.0])
    out = den(net, x, sigma, {"crossattn": None}, extra=1)
    sd2 = 0.25
    s = sigma[:, None, None, None]
    expected = 2.0 * s * 0.5 / (s**2 + sd2) ** 0.5 + x * sd2 / (s**2 + sd2)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(net.seen[0], x / (s**2 + sd2) ** 0.5)
    torch.testing.assert_close(net.seen[1], 0.25 * sigma.log())
    assert net.seen[3] == {"extra": 1}


def _discrete(quantize=True):
    return DiscreteDenoiser(
        {"target": P + "denoiser_scaling.EpsScaling"},
        num_idx=1000,
        discretization_config=DDPM,
        quantize_c_noise=quantize,
    )


def test_discrete_denoiser_state_dict_and_round_trip():
    den = _discrete()
    holder = nn.Module()
    holder.denoiser = den
    sd = holder.state_dict()
    assert list(sd) == ["denoiser.sigmas"] and sd["denoiser.sigmas"].shape == (1000,)
    assert torch.all(den.sigmas[1:] > den.sigmas[:-1])  # ascending table
    idx = torch.tensor([0, 1, 17, 500, 998, 999])
    assert torch.equal(den.sigma_to_idx(den.idx_to_sigma(idx)), idx)
    # A sigma slightly off a table entry snaps to that entry.
    off = den.sigmas[idx] * (1 + 1e-4)
    torch.testing.assert_close(den.possibly_quantize_sigma(off), den.sigmas[idx])


def test_discrete_denoiser_passes_timestep_index():
    den, net = _discrete(), _RecordingNet()
    x = torch.randn(3, 2, 2, 2)
    sigma = den.sigmas[torch.tensor([10, 400, 999])] * 1.00001
    den(net, x, sigma, {})
    assert torch.equal(net.seen[1], torch.tensor([10, 400, 999]))
    den_continuous = _discrete(quantize=False)
    den_continuous(net, x, sigma, {})
    torch.testing.assert_close(net.seen[1], den.sigmas[torch.tensor([10, 400, 999])])


def test_sigma_samplers():
    torch.manual_seed(3)
    draws = torch.randn(5)
    torch.manual_seed(3)
    torch.testing.assert_close(EDMSampling()(5), torch.exp(-1.2 + 1.2 * draws))
    rand = torch.tensor([-1.0, 0.0, 2.0])
    torch.testing.assert_close(EDMSampling(0.5, 2.0)(3, rand=rand), torch.exp(0.5 + 2.0 * rand))
    ds = DiscreteSampling(DDPM, num_idx=1000)
    torch.testing.assert_close(ds(2, rand=torch.tensor([0, 999])), ds.sigmas[[0, 999]])
    assert ds(64).shape == (64,)
    assert set(ds(256).tolist()) <= set(ds.sigmas.tolist())
    torch.testing.assert_close(ZeroSampler()(4), torch.full((4,), 1e-5))


def test_edm_sampling_log_normal_statistics():
    log_sigma = EDMSampling(-1.2, 1.2)(200_000).log()
    assert abs(log_sigma.mean().item() + 1.2) < 0.01
    assert abs(log_sigma.std().item() - 1.2) < 0.01
    assert math.isfinite(log_sigma.sum().item())
