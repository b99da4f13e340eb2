"""Noise schedules vs closed forms, diffusers' SD scheduler and published values."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from sgm.modules.diffusionmodules.discretizer import (
    Discretization,
    EDMDiscretization,
    LegacyDDPMDiscretization,
    generate_roughly_equally_spaced_steps,
)
from sgm.util import instantiate_from_config


@pytest.mark.parametrize("n,smin,smax,rho", [(10, 0.002, 80.0, 7.0), (25, 0.03, 14.61, 3.0)])
def test_edm_is_karras_formula(n, smin, smax, rho):
    i = np.arange(n, dtype=np.float64)
    karras = (smax ** (1 / rho) + i / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    sigmas = EDMDiscretization(smin, smax, rho)(n)
    assert sigmas.shape == (n + 1,) and sigmas[-1] == 0
    np.testing.assert_allclose(sigmas[:-1].numpy(), karras, rtol=2e-6)
    flipped = EDMDiscretization(smin, smax, rho)(n, do_append_zero=False, flip=True)
    np.testing.assert_allclose(flipped.numpy(), karras[::-1], rtol=2e-6)


def test_legacy_ddpm_published_sd_values():
    sigmas = LegacyDDPMDiscretization()(1000, do_append_zero=False, flip=True)
    assert sigmas.dtype == torch.float32 and sigmas.shape == (1000,)
    assert abs(sigmas[0].item() - 0.0292) < 1e-4
    assert abs(sigmas[-1].item() - 14.6146) < 1e-4


@pytest.mark.parametrize("n", [1000, 50, 10, 1])
def test_legacy_ddpm_matches_diffusers_trailing_schedule(n):
    from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteScheduler

    sched = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        timestep_spacing="trailing",
    )
    sched.set_timesteps(n)
    ours = LegacyDDPMDiscretization()(n)
    np.testing.assert_allclose(ours.numpy(), sched.sigmas.numpy(), rtol=2e-5, atol=1e-7)


def test_roughly_equally_spaced_steps():
    np.testing.assert_array_equal(
        generate_roughly_equally_spaced_steps(4, 1000), [249, 499, 749, 999]
    )
    steps = generate_roughly_equally_spaced_steps(7, 1000)
    assert steps[-1] == 999 and np.all(np.diff(steps) > 0) and len(steps) == 7


def test_ddpm_too_many_steps_is_an_error():
    with pytest.raises(ValueError, match="n=1001"):
        LegacyDDPMDiscretization()(1001)


def test_contract_device_flip_and_config():
    cfg = OmegaConf.create(
        {
            "target": "sgm.modules.diffusionmodules.discretizer.EDMDiscretization",
            "params": {"sigma_min": 0.002, "sigma_max": 700.0},
        }
    )
    disc = instantiate_from_config(cfg)
    assert isinstance(disc, Discretization)
    sig = disc(5, device=torch.device("cpu"))
    assert sig.device.type == "cpu" and sig[0].item() == pytest.approx(700.0, rel=1e-6)
    assert torch.equal(disc(5, flip=True), torch.flip(sig, (0,)))
    assert torch.all(sig[:-1] > sig[1:])


def test_meta_device_follows_request():
    sig = LegacyDDPMDiscretization()(4, device="meta")
    assert sig.device.type == "meta" and sig.shape == (5,)
