"""Every sampler on data with a closed-form ideal denoiser (Gaussian, mixture)."""

import math

import pytest
import torch

from sgm.modules.diffusionmodules import sampling

P = "sgm.modules.diffusionmodules."
EDM = {"target": P + "discretizer.EDMDiscretization", "params": {"sigma_max": 80.0}}
# (sampler, kwargs, steps): first-order methods need more steps for the same accuracy.
ALL = [
    ("EulerEDMSampler", {}, 100),
    ("EulerEDMSampler", {"s_churn": 2.0}, 100),
    ("HeunEDMSampler", {}, 25),
    ("EulerAncestralSampler", {}, 200),
    ("DPMPP2SAncestralSampler", {}, 50),
    ("DPMPP2SAncestralSampler", {"eta": 0.5}, 50),
    ("LinearMultistepSampler", {}, 25),
    ("DPMPP2MSampler", {}, 25),
]


class GaussianDenoiser:
    """E[x0 | x] for x0 ~ N(mu, s^2) per entry, x = x0 + sigma n."""

    def __init__(self, mu, s):
        self.mu, self.s = mu, s

    def __call__(self, x, sigma, cond):
        sigma = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        return self.mu + self.s**2 / (self.s**2 + sigma**2) * (x - self.mu)


class MixtureDenoiser:
    """E[x0 | x] for x0 ~ sum_k w_k N(mu_k, s_k^2) per entry."""

    def __init__(self, weights, mus, stds):
        self.w = torch.tensor(weights, dtype=torch.float64)
        self.mu = torch.tensor(mus, dtype=torch.float64)
        self.s = torch.tensor(stds, dtype=torch.float64)

    def __call__(self, x, sigma, cond):
        sigma = sigma.reshape(-1, *([1] * x.ndim)).to(torch.float64)
        xk = x.to(torch.float64)[..., None]
        var = self.s**2 + sigma**2
        log_r = torch.log(self.w) - 0.5 * torch.log(var) - 0.5 * (xk - self.mu) ** 2 / var
        r = torch.softmax(log_r, dim=-1)
        means = self.mu + self.s**2 / var * (xk - self.mu)
        return (r * means).sum(-1).to(x.dtype)


def _sampler(name, kwargs, num_steps):
    cls = getattr(sampling, name)
    return cls(discretization_config=EDM, num_steps=num_steps, **kwargs)


@pytest.mark.parametrize("name,kwargs,steps", ALL)
def test_gaussian_statistics(name, kwargs, steps):
    mu, s = 1.5, 0.5
    x = torch.randn(4096, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    sampler = _sampler(name, kwargs, steps)
    out = sampler(GaussianDenoiser(mu, s), x, {}, generator=torch.Generator().manual_seed(1))
    # The start N(0, 1 + sigma_max^2) is off by mu from the marginal: bias ~ mu s/80.
    assert abs(out.mean().item() - mu) < 0.03
    assert abs(out.std().item() - s) < 0.03


@pytest.mark.parametrize("name,kwargs,steps", ALL)
def test_mixture_statistics(name, kwargs, steps):
    den = MixtureDenoiser([0.3, 0.7], [-2.0, 2.0], [0.4, 0.6])
    x = torch.randn(8192, 1, generator=torch.Generator().manual_seed(2))
    sampler = _sampler(name, kwargs, steps)
    out = sampler(den, x, {}, generator=torch.Generator().manual_seed(3))
    frac_pos = (out > 0).double().mean().item()
    assert abs(frac_pos - 0.7) < 0.02
    pos, neg = out[out > 0], out[out <= 0]
    assert abs(pos.mean().item() - 2.0) < 0.05 and abs(neg.mean().item() + 2.0) < 0.05
    assert abs(pos.std().item() - 0.6) < 0.05 and abs(neg.std().item() - 0.4) < 0.05


def _ode_error(name, num_steps):
    """Max error of the deterministic sample vs the exact probability-flow solution.

    For Gaussian data dx/dsigma = sigma (x - mu) / (s^2 + sigma^2), so x - mu scales
    with sqrt(s^2 + sigma^2) from sigma_max down to sigma_min; the last step to
    sigma = 0 returns D(x, sigma_min).
    """
    mu, s = 1.0, 0.5
    den = GaussianDenoiser(mu, s)
    sampler = _sampler(name, {}, num_steps)
    noise = torch.randn(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    sigmas = sampler.discretization(num_steps).to(torch.float64)
    s_max, s_min = sigmas[0], sigmas[-2]
    x_start = noise * torch.sqrt(1.0 + sampler.discretization(num_steps)[0] ** 2.0)
    x_at_min = mu + (x_start - mu) * torch.sqrt((s**2 + s_min**2) / (s**2 + s_max**2))
    exact = den(x_at_min, s_min.expand(64), None)
    return (sampler(den, noise, {}) - exact).abs().max().item()


@pytest.mark.parametrize(
    "name,ratio_range",
    [
        ("EulerEDMSampler", (1.6, 2.5)),
        ("HeunEDMSampler", (3.2, 5.0)),
        ("DPMPP2MSampler", (3.0, 6.0)),
    ],
)
def test_convergence_order(name, ratio_range):
    errors = [_ode_error(name, n) for n in (16, 32, 64)]
    ratios = [errors[i] / errors[i + 1] for i in range(2)]
    assert all(ratio_range[0] < r < ratio_range[1] for r in ratios), (errors, ratios)


def test_higher_order_methods_are_more_accurate():
    euler = _ode_error("EulerEDMSampler", 64)
    assert _ode_error("HeunEDMSampler", 64) < 0.1 * euler
    # Fourth-order multistep: the error ratio approaches 16 as steps double.
    lms = [_ode_error("LinearMultistepSampler", n) for n in (64, 128)]
    assert lms[0] / lms[1] > 12 and lms[1] < 0.005 * euler


def test_generator_reproducibility_and_isolation():
    den = GaussianDenoiser(0.0, 1.0)
    x = torch.randn(4, 3, 8, 8)
    for name, kwargs in [
        ("EulerEDMSampler", {"s_churn": 5.0}),
        ("EulerAncestralSampler", {}),
        ("DPMPP2SAncestralSampler", {}),
    ]:
        sampler = _sampler(name, kwargs, 6)
        state = torch.get_rng_state()
        a = sampler(den, x, {}, generator=torch.Generator().manual_seed(7))
        assert torch.equal(torch.get_rng_state(), state)  # the global stream is untouched
        b = sampler(den, x, {}, generator=torch.Generator().manual_seed(7))
        c = sampler(den, x, {}, generator=torch.Generator().manual_seed(8))
        assert torch.equal(a, b) and not torch.allclose(a, c)
        torch.manual_seed(11)
        d = sampler(den, x, {})
        torch.manual_seed(11)
        assert torch.equal(d, sampler(den, x, {}))


def test_input_not_modified_and_device_follows_input():
    x = torch.randn(2, 3)
    before = x.clone()
    sampler = _sampler("EulerEDMSampler", {}, 3)
    assert sampler.device is None
    out = sampler(GaussianDenoiser(0.0, 1.0), x, {})
    assert torch.equal(x, before) and out.device == x.device
    x2, s_in, sigmas, num_sigmas, cond, uc = sampler.prepare_sampling_loop(x, {"a": 1})
    assert num_sigmas == 4 and uc == {"a": 1} and torch.equal(s_in, torch.ones(2))
    torch.testing.assert_close(x2, x * math.sqrt(1 + 80.0**2))


def test_num_steps_required():
    with pytest.raises(ValueError, match="num_steps"):
        _sampler("EulerEDMSampler", {}, None)(GaussianDenoiser(0.0, 1.0), torch.zeros(1), {})


@pytest.mark.gpu
def test_cuda_sampling_follows_input_device_and_generator():
    device = torch.device("cuda")
    den = GaussianDenoiser(0.0, 1.0)
    x = torch.randn(2, 3, device=device)
    sampler = _sampler("EulerAncestralSampler", {}, 4)
    a = sampler(den, x, {}, generator=torch.Generator(device).manual_seed(1))
    b = sampler(den, x, {}, generator=torch.Generator(device).manual_seed(1))
    assert a.device.type == "cuda" and torch.equal(a, b)
