"""No sampler waits for the device inside its loop.

Every way a tensor value reaches Python (``bool``, ``item``, ``tolist``, ``float``,
``int``, ``numpy``, ``cpu``) is made to raise while the loop runs: on an accelerator each
one is a host synchronisation. The schedule is read once, before the first step.
"""

import contextlib

import pytest
import torch

from sgm.modules.diffusionmodules import sampling

P = "sgm.modules.diffusionmodules."
EDM = {"target": P + "discretizer.EDMDiscretization", "params": {"sigma_max": 80.0}}
DDPM = {"target": P + "discretizer.LegacyDDPMDiscretization"}
CFG = {"target": P + "guiders.VanillaCFG", "params": {"scale": 4.0}}
READS = ("__bool__", "item", "tolist", "__float__", "__int__", "__index__", "numpy", "cpu")


class HostSync(AssertionError):
    pass


@contextlib.contextmanager
def no_host_reads(monkeypatch):
    """Any read of a tensor's value by Python raises ``HostSync`` inside the block."""
    with monkeypatch.context() as patch:
        for name in READS:

            def refuse(self, *args, _name=name, **kwargs):
                raise HostSync(f"Tensor.{_name} called inside the sampling loop")

            patch.setattr(torch.Tensor, name, refuse)
        yield


def _trap_loop(sampler, monkeypatch):
    """Arm :func:`no_host_reads` for exactly the steps of the sampler's loop."""
    plain = sampler.get_sigma_gen

    def steps(num_sigmas):
        indices = list(plain(num_sigmas))
        with no_host_reads(monkeypatch):
            yield from indices

    monkeypatch.setattr(sampler, "get_sigma_gen", steps)


def denoiser(x, sigma, cond, shift=0.0):
    """Gaussian data N(0.3 + shift, 0.5^2) per entry: closed-form ideal denoiser."""
    mu, var = 0.3 + cond["vector"][:, :1, None, None] + shift, 0.25
    s2 = sigma.reshape(-1, 1, 1, 1) ** 2
    return (var * x + s2 * mu) / (var + s2)


SAMPLERS = [
    ("EulerEDMSampler", {}),
    ("EulerEDMSampler", {"s_churn": 2.0, "s_tmin": 0.5, "s_tmax": 20.0}),
    ("HeunEDMSampler", {}),
    ("HeunEDMSampler", {"s_churn": 1.0}),
    ("EulerAncestralSampler", {}),
    ("DPMPP2SAncestralSampler", {"eta": 0.8}),
    ("DPMPP2MSampler", {}),
    ("LinearMultistepSampler", {"order": 3}),
]


@pytest.mark.parametrize("disc", [EDM, DDPM], ids=["edm", "ddpm"])
@pytest.mark.parametrize("guider", [None, CFG], ids=["plain", "cfg"])
@pytest.mark.parametrize("name,kwargs", SAMPLERS)
def test_no_host_sync_inside_the_loop(monkeypatch, name, kwargs, disc, guider):
    sampler = getattr(sampling, name)(
        discretization_config=disc, guider_config=guider, num_steps=6, **kwargs
    )
    x = torch.randn(2, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    c = {"vector": torch.full((2, 1), 0.2)}
    uc = {"vector": torch.zeros(2, 1)}
    reference = sampler(denoiser, x, c, uc, generator=torch.Generator().manual_seed(1), shift=0.1)
    seen = []
    _trap_loop(sampler, monkeypatch)
    out = sampler(
        denoiser,
        x,
        c,
        uc,
        generator=torch.Generator().manual_seed(1),
        callback=lambda info: seen.append(info["i"]),
        shift=0.1,
    )
    assert seen == list(range(6))
    assert torch.equal(out, reference)


def test_the_trap_catches_a_host_read(monkeypatch):
    """Called alone, sampler_step must read the device to know a step is the last one;
    the trap sees that (so the test above can fail)."""
    sampler = sampling.HeunEDMSampler(discretization_config=EDM, num_steps=3)
    x, s_in = torch.randn(2, 1, 2, 2), torch.ones(2)
    cond = {"vector": torch.zeros(2, 1)}
    with no_host_reads(monkeypatch), pytest.raises(HostSync, match="__bool__"):
        sampler.sampler_step(s_in, 0.5 * s_in, denoiser, x, cond, cond)
    assert sampler.sampler_step(s_in, 0.5 * s_in, denoiser, x, cond, cond).shape == x.shape
