"""LCM sampling, trailing timesteps and x0 prediction against diffusers' schedulers, step
by step, on identical model outputs and noise.

The "network" is a fixed smooth function of the latent and the timestep; our sampler sees
it through a real ``DiscreteDenoiser`` (epsilon or x0 scaling), diffusers' scheduler sees
its output directly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sgm.modules.diffusionmodules.denoiser import DiscreteDenoiser
from sgm.modules.diffusionmodules.discretizer import LegacyDDPMDiscretization
from sgm.modules.diffusionmodules.distilled import LCMSampler, lcm_timesteps

pytest.importorskip("diffusers")

D = "sgm.modules.diffusionmodules"
SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


def network(z: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """A deterministic stand-in for a UNet: eps (or x0) from the VP latent and timestep."""
    t = torch.as_tensor(t, dtype=z.dtype).reshape(-1, *[1] * (z.ndim - 1))
    return 0.6 * torch.tanh(z) + 0.3 * torch.sin(t / 97.0 + z) + 0.05


class Net(torch.nn.Module):
    def forward(self, x, t, cond):
        return network(x, t.float())


def _denoiser(scaling: str, spacing: str = "original") -> DiscreteDenoiser:
    disc = {"target": f"{D}.discretizer.LegacyDDPMDiscretization"}
    if spacing != "original":
        disc["params"] = {"timestep_spacing": spacing}
    return DiscreteDenoiser(
        scaling_config={"target": scaling}, num_idx=1000, discretization_config=disc
    )


def _our_run(sampler, scaling, steps, x, seed):
    denoiser = _denoiser(scaling)
    net = Net()
    record = []
    out = sampler(
        lambda inp, sigma, c: denoiser(net, inp, sigma, c),
        x.clone(),
        cond={},
        num_steps=steps,
        generator=torch.Generator().manual_seed(seed),
        callback=lambda info: record.append(info),
    )
    return out, record


def _same_schedule(scheduler, discretization):
    """The scheduler on our alphas (float64 cumulative product, as this library's)."""
    scheduler.alphas_cumprod = torch.tensor(discretization.alphas_cumprod, dtype=torch.float32)
    return scheduler


def _close(ours, theirs, rel=1e-6):
    """Within ``rel`` of the output scale (float32 rounding of values around 30)."""
    torch.testing.assert_close(ours, theirs, rtol=0, atol=rel * float(theirs.abs().max()))


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_lcm_steps_equal_diffusers_lcm_scheduler(steps):
    from diffusers import LCMScheduler

    sampler = LCMSampler(
        discretization_config={"target": f"{D}.distilled.LCMDiscretization"}, verbose=False
    )
    theirs = _same_schedule(LCMScheduler(**SD_BETAS), sampler.discretization)
    theirs.set_timesteps(steps)
    assert theirs.timesteps.tolist() == lcm_timesteps(steps).tolist()
    x = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(0))
    ours, record = _our_run(sampler, f"{D}.denoiser_scaling.EpsScaling", steps, x, seed=3)
    generator = torch.Generator().manual_seed(3)
    z = x * theirs.init_noise_sigma
    abar = theirs.alphas_cumprod
    for i, t in enumerate(theirs.timesteps):
        seen = record[i]["x"] * abar[t].sqrt()  # our state is z_t / sqrt(abar_t)
        _close(seen, z)
        z, denoised = theirs.step(network(z, t), t, z, generator=generator, return_dict=False)
        _close(record[i]["denoised"], denoised)
    _close(ours, z)


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 8, 25])
def test_trailing_sigmas_equal_euler_discrete_trailing(steps):
    from diffusers import EulerDiscreteScheduler

    ours = LegacyDDPMDiscretization(timestep_spacing="trailing")
    theirs = _same_schedule(EulerDiscreteScheduler(**SD_BETAS, timestep_spacing="trailing"), ours)
    theirs.set_timesteps(steps)
    torch.testing.assert_close(ours(steps), theirs.sigmas, rtol=1e-6, atol=0)
    # the timesteps our discrete denoiser reads off those sigmas are the scheduler's
    denoiser = _denoiser(f"{D}.denoiser_scaling.EpsScaling")
    idx = denoiser.sigma_to_idx(ours(steps, do_append_zero=False))
    assert idx.tolist() == theirs.timesteps.long().tolist()


def test_default_spacing_is_unchanged():
    ours = LegacyDDPMDiscretization()
    for steps in (1, 3, 4, 50):
        idx = np.linspace(999, 0, steps, endpoint=False).astype(int)[::-1]
        abar = ours.alphas_cumprod[idx]
        expected = torch.flip(torch.tensor((1 - abar) / abar, dtype=torch.float32) ** 0.5, (0,))
        assert torch.equal(ours.get_sigmas(steps), expected)
    with pytest.raises(ValueError, match="timestep_spacing"):
        LegacyDDPMDiscretization(timestep_spacing="leading-ish")


@pytest.mark.parametrize(
    ("steps", "prediction"), [(1, "sample"), (2, "epsilon"), (4, "epsilon"), (4, "sample")]
)
def test_trailing_euler_run_equals_diffusers(steps, prediction):
    """SDXL-Lightning's sampling: Euler on trailing timesteps, epsilon or x0 prediction."""
    from diffusers import EulerDiscreteScheduler

    from sgm.modules.diffusionmodules.sampling import EulerEDMSampler

    sampler = EulerEDMSampler(
        discretization_config={
            "target": f"{D}.discretizer.LegacyDDPMDiscretization",
            "params": {"timestep_spacing": "trailing"},
        },
        verbose=False,
    )
    scheduler = EulerDiscreteScheduler(
        **SD_BETAS, timestep_spacing="trailing", prediction_type=prediction
    )
    theirs = _same_schedule(scheduler, sampler.discretization)
    theirs.set_timesteps(steps)
    scaling = "EpsScaling" if prediction == "epsilon" else "distilled.X0Scaling"
    scaling = f"{D}.denoiser_scaling.{scaling}" if "." not in scaling else f"{D}.{scaling}"
    x = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(1))
    ours, record = _our_run(sampler, scaling, steps, x, seed=0)
    # both start from unit noise times sqrt(1 + sigma_max^2) (diffusers' trailing Euler
    # would take sigma_max alone; the step rule is what is compared)
    z = record[0]["x"]
    for i, t in enumerate(theirs.timesteps):
        torch.testing.assert_close(record[i]["x"], z, rtol=1e-5, atol=1e-5)
        out = network(theirs.scale_model_input(z, t), t)
        z = theirs.step(out, t, z, return_dict=False)[0]
    torch.testing.assert_close(ours, z, rtol=1e-5, atol=1e-5)
