"""Samplers against k-diffusion's (same sigmas, same denoiser, same noise).

Outputs are equal bit for bit (LinearMultistep within 2e-6: its weights are exact here).
Documented differences from k-diffusion, each tested below:
- the start: sgm samplers take unit noise and scale it by sqrt(1 + sigma_0^2);
  k-diffusion takes the scaled start, so it gets x * sqrt(1 + sigma_0^2);
- churn noise (Euler/Heun EDM): sgm draws it only on steps that churn, k-diffusion on
  every step (discarding it where gamma = 0);
- ancestral samplers: sgm also draws (and discards) noise on the last step to 0.
"""

import importlib.metadata
import importlib.util
import inspect
import pathlib
import subprocess
import sys
import types
from fractions import Fraction

import numpy as np
import pytest
import torch

from sgm.modules.diffusionmodules import sampling, sampling_utils

P = "sgm.modules.diffusionmodules."
EDM = {"target": P + "discretizer.EDMDiscretization", "params": {"sigma_max": 80.0}}
DDPM = {"target": P + "discretizer.LegacyDDPMDiscretization"}
STEPS = 12


@pytest.fixture(scope="module")
def K():
    """k_diffusion.sampling loaded by path (the package __init__ needs wandb/clip)."""
    root = pathlib.Path(importlib.metadata.distribution("k-diffusion").locate_file("k_diffusion"))
    saved = {k: sys.modules.get(k) for k in ("k_diffusion", "torchdiffeq")}
    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = [str(root)]
    sys.modules["k_diffusion"] = pkg
    if importlib.util.find_spec("torchdiffeq") is None:
        stub = types.ModuleType("torchdiffeq")
        stub.odeint = None  # only the ODE log-likelihood uses it
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


def mixture_denoiser(x, sigma, cond=None):
    """Ideal denoiser of a 2-component Gaussian mixture per entry (a nonlinear D)."""
    w, mu, s = (
        torch.tensor([0.4, 0.6]),
        torch.tensor([-1.0, 1.5]),
        torch.tensor([0.3, 0.5]),
    )
    sigma = sigma.reshape(-1, *([1] * x.ndim))
    var = s**2 + sigma**2
    xk = x[..., None]
    r = torch.softmax(torch.log(w) - 0.5 * torch.log(var) - 0.5 * (xk - mu) ** 2 / var, -1)
    return (r * (mu + s**2 / var * (xk - mu))).sum(-1)


def _ours(name, disc=EDM, **kwargs):
    return getattr(sampling, name)(discretization_config=disc, num_steps=STEPS, **kwargs)


def _kd_start(sampler, x):
    return x * torch.sqrt(1.0 + sampler.discretization(STEPS)[0] ** 2.0)


CASES = [
    ("EulerEDMSampler", {}, "sample_euler", {}),
    ("EulerEDMSampler", {"s_churn": 3.0}, "sample_euler", {"s_churn": 3.0}),
    ("HeunEDMSampler", {}, "sample_heun", {}),
    (
        "HeunEDMSampler",
        {"s_churn": 3.0, "s_noise": 1.01},
        "sample_heun",
        {"s_churn": 3.0, "s_noise": 1.01},
    ),
    ("EulerAncestralSampler", {}, "sample_euler_ancestral", {}),
    ("EulerAncestralSampler", {"eta": 0.6}, "sample_euler_ancestral", {"eta": 0.6}),
    ("DPMPP2SAncestralSampler", {}, "sample_dpmpp_2s_ancestral", {}),
    (
        "DPMPP2SAncestralSampler",
        {"eta": 0.5, "s_noise": 0.9},
        "sample_dpmpp_2s_ancestral",
        {"eta": 0.5, "s_noise": 0.9},
    ),
    ("DPMPP2MSampler", {}, "sample_dpmpp_2m", {}),
    ("LinearMultistepSampler", {}, "sample_lms", {}),
    ("LinearMultistepSampler", {"order": 2}, "sample_lms", {"order": 2}),
]


@pytest.mark.parametrize("disc", [EDM, DDPM], ids=["edm", "ddpm"])
@pytest.mark.parametrize("name,kwargs,kd_name,kd_kwargs", CASES)
def test_matches_k_diffusion(K, disc, name, kwargs, kd_name, kd_kwargs):
    sampler = _ours(name, disc, **kwargs)
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    sigmas = sampler.discretization(STEPS)
    torch.manual_seed(123)
    ours = sampler(mixture_denoiser, x, {})
    torch.manual_seed(123)
    theirs = getattr(K, kd_name)(
        mixture_denoiser, _kd_start(sampler, x), sigmas, disable=True, **kd_kwargs
    )
    _assert_matches(name, ours, theirs)


def _assert_matches(name, ours, theirs):
    """Bit for bit; LMS within 2e-6 relative to the scale (its weights are exact here,
    k-diffusion integrates them numerically with epsrel=1e-4)."""
    if name == "LinearMultistepSampler":
        scale = max(1.0, theirs.abs().max().item())
        assert (ours - theirs).abs().max().item() <= 2e-6 * scale
    else:
        assert torch.equal(ours, theirs)


def test_guided_sampling_matches_k_diffusion_cfg(K):
    """VanillaCFG on [uc, c] equals a k-diffusion model doing CFG by hand."""
    scale = 3.0

    def conditional(x, sigma, cond):
        return mixture_denoiser(x, sigma) + cond["vector"][:, :, None, None]

    sampler = _ours(
        "HeunEDMSampler",
        guider_config={"target": P + "guiders.VanillaCFG", "params": {"scale": scale}},
    )
    x = torch.randn(2, 2, 3, 3, generator=torch.Generator().manual_seed(4))
    c, uc = {"vector": torch.full((2, 2), 0.3)}, {"vector": torch.zeros(2, 2)}
    ours = sampler(conditional, x, c, uc)

    def kd_model(x, sigma):
        d_u, d_c = conditional(x, sigma, uc), conditional(x, sigma, c)
        return d_u + scale * (d_c - d_u)

    theirs = K.sample_heun(
        kd_model, _kd_start(sampler, x), sampler.discretization(STEPS), disable=True
    )
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_churn_noise_drawn_only_on_churned_steps(K, monkeypatch):
    """Churn only in [s_tmin, s_tmax]: k-diffusion's extra draws are the difference."""
    kw = {"s_churn": 4.0, "s_tmin": 0.1, "s_tmax": 5.0}
    sampler = _ours("EulerEDMSampler", **kw)
    x = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(1))
    sigmas = sampler.discretization(STEPS)
    torch.manual_seed(5)
    ours = sampler(mixture_denoiser, x, {})
    start = _kd_start(sampler, x)
    torch.manual_seed(5)
    plain = K.sample_euler(mixture_denoiser, start, sigmas, disable=True, **kw)
    assert (ours - plain).abs().max().item() > 1e-3
    churned = [bool(0.1 <= s <= 5.0) for s in sigmas[:-1].tolist()]
    real_randn_like, calls = torch.randn_like, iter(churned)
    monkeypatch.setattr(
        torch,
        "randn_like",
        lambda t: real_randn_like(t) if next(calls) else torch.zeros_like(t),
    )
    torch.manual_seed(5)
    skipping = K.sample_euler(mixture_denoiser, start, sigmas, disable=True, **kw)
    assert (ours - skipping).abs().max().item() <= 1e-5


def test_ancestral_draws_one_extra_noise_at_the_end(K):
    sampler = _ours("EulerAncestralSampler")
    x = torch.randn(2, 3)
    torch.manual_seed(9)
    sampler(mixture_denoiser, x, {})
    after_ours = torch.randn(4)
    torch.manual_seed(9)
    K.sample_euler_ancestral(
        mixture_denoiser,
        _kd_start(sampler, x),
        sampler.discretization(STEPS),
        disable=True,
    )
    torch.randn_like(x)
    assert torch.equal(torch.randn(4), after_ours)


def _exact_lms_coeff(order, t, i, j):
    """The Lagrange-basis integral in exact rational arithmetic."""
    poly = [Fraction(1)]  # coefficients, lowest degree first
    for k in range(order):
        if k == j:
            continue
        root, den = Fraction(t[i - k]), Fraction(t[i - j]) - Fraction(t[i - k])
        shifted = [Fraction(0)] + poly
        poly = [(a - root * b) / den for a, b in zip(shifted, poly + [0], strict=True)]

    def antiderivative(x):
        return sum(a * x ** (p + 1) / (p + 1) for p, a in enumerate(poly))

    return float(antiderivative(Fraction(t[i + 1])) - antiderivative(Fraction(t[i])))


@pytest.mark.parametrize("disc", [EDM, DDPM], ids=["edm", "ddpm"])
def test_lms_coefficients_match_exact_and_quadrature(K, disc):
    from scipy import integrate

    t32 = _ours("LinearMultistepSampler", disc).discretization(20).numpy()
    t = t32.astype(np.float64)
    for order in range(1, 5):
        for i in range(order - 1, len(t) - 1):
            for j in range(order):
                ours = sampling_utils.linear_multistep_coeff(order, t32, i, j)
                scale = max(abs(t[i + 1] - t[i]), abs(ours))
                exact = _exact_lms_coeff(order, [float(v) for v in t], i, j)
                assert abs(ours - exact) <= 1e-14 * scale

                def basis(tau, order=order, i=i, j=j):
                    return np.prod(
                        [(tau - t[i - k]) / (t[i - j] - t[i - k]) for k in range(order) if k != j]
                    )

                quad = integrate.quad(basis, t[i], t[i + 1], epsrel=1e-12)[0]
                assert abs(ours - quad) <= 1e-12 * scale
                # k-diffusion integrates in the sigmas' float32 with epsrel=1e-4.
                assert abs(ours - K.linear_multistep_coeff(order, t32, i, j)) <= 1e-5 * scale
    with pytest.raises(ValueError, match="Order 3 too high for step 1"):
        sampling_utils.linear_multistep_coeff(3, t, 1, 0)


def test_small_helpers_match_k_diffusion(K):
    s_from, s_to = torch.tensor([5.0, 1.0, 0.3]), torch.tensor([3.0, 0.2, 0.0])
    for eta in (1.0, 0.5):
        down, up = sampling_utils.get_ancestral_step(s_from, s_to, eta)
        for n in range(3):  # k-diffusion works on one sigma at a time
            kd_down, kd_up = K.get_ancestral_step(s_from[n], s_to[n], eta)
            torch.testing.assert_close(down[n], kd_down)
            torch.testing.assert_close(up[n], kd_up)
    x, den = torch.randn(3, 2, 2), torch.randn(3, 2, 2)
    torch.testing.assert_close(sampling_utils.to_d(x, s_from, den), K.to_d(x, s_from, den))
    torch.testing.assert_close(
        sampling_utils.to_sigma(sampling_utils.to_neg_log_sigma(s_from)), s_from
    )


def test_sampling_does_not_import_scipy():
    code = (
        "import sgm.modules.diffusionmodules.sampling as s, sys;"
        "assert 'scipy' not in sys.modules, 'scipy imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- contract

CONTRACT = [
    ("EulerEDMSampler", {}, "sample_euler"),
    ("HeunEDMSampler", {}, "sample_heun"),
    ("EulerAncestralSampler", {}, "sample_euler_ancestral"),
    ("DPMPP2SAncestralSampler", {}, "sample_dpmpp_2s_ancestral"),
    ("DPMPP2MSampler", {}, "sample_dpmpp_2m"),
    ("LinearMultistepSampler", {}, "sample_lms"),
]


class _KwargsDenoiser:
    """A denoiser that needs keyword arguments and records every call's."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, sigma, cond=None, *, shift, gain):
        self.calls.append({"shift": shift, "gain": gain})
        return gain * mixture_denoiser(x, sigma) + shift


@pytest.mark.parametrize("name,kwargs,kd_name", CONTRACT, ids=[c[0] for c in CONTRACT])
def test_every_sampler_forwards_kwargs_and_reports_steps_like_k_diffusion(K, name, kwargs, kd_name):
    """One table for every sampler: ``**denoiser_kwargs`` reach each network call and
    ``callback`` gets k-diffusion's per-step dictionary, value for value."""
    sampler = _ours(name, **kwargs)
    x = torch.randn(2, 2, 3, 3, generator=torch.Generator().manual_seed(3))
    extra = {"shift": torch.full((2, 2, 3, 3), 0.25), "gain": 0.9}
    ours_den, kd_den = _KwargsDenoiser(), _KwargsDenoiser()
    ours_steps, kd_steps = [], []
    torch.manual_seed(11)
    ours = sampler(ours_den, x, {}, callback=ours_steps.append, **extra)
    torch.manual_seed(11)
    theirs = getattr(K, kd_name)(
        kd_den,
        _kd_start(sampler, x),
        sampler.discretization(STEPS),
        extra_args=extra,
        callback=kd_steps.append,
        disable=True,
    )
    _assert_matches(name, ours, theirs)
    assert len(ours_den.calls) == len(kd_den.calls) >= STEPS
    assert all(c["shift"] is extra["shift"] and c["gain"] == 0.9 for c in ours_den.calls)
    assert len(ours_steps) == len(kd_steps) == STEPS
    for mine, kd in zip(ours_steps, kd_steps, strict=True):
        assert set(mine) == set(kd) == {"i", "sigma", "sigma_hat", "x", "denoised"}
        assert mine["i"] == kd["i"]
        assert torch.equal(mine["sigma"], kd["sigma"])
        assert torch.equal(mine["sigma_hat"], kd["sigma_hat"])
        _assert_matches(name, mine["x"], kd["x"])
        _assert_matches(name, mine["denoised"], kd["denoised"])


@pytest.mark.parametrize("name", [c[0] for c in CONTRACT])
def test_every_sampler_has_one_signature(name):
    params = inspect.signature(getattr(sampling, name).__call__).parameters
    assert list(params) == [
        "self",
        "denoiser",
        "x",
        "cond",
        "uc",
        "num_steps",
        "generator",
        "callback",
        "denoiser_kwargs",
    ]
    assert params["denoiser_kwargs"].kind is inspect.Parameter.VAR_KEYWORD


def _hand_loop(sampler, denoiser, x, gammas=None, **kw):
    """The loop a script writes with prepare_sampling_loop and sampler_step."""
    x, s_in, sigmas, num_sigmas, cond, uc = sampler.prepare_sampling_loop(x, {})
    old = None
    for i in range(num_sigmas - 1):
        sigma, nxt = s_in * sigmas[i], s_in * sigmas[i + 1]
        if isinstance(sampler, sampling.DPMPP2MSampler):
            prev = None if i == 0 else s_in * sigmas[i - 1]
            x, old = sampler.sampler_step(old, prev, sigma, nxt, denoiser, x, cond, uc, **kw)
        elif gammas is not None:
            x = sampler.sampler_step(sigma, nxt, denoiser, x, cond, uc, gammas[i], **kw)
        else:
            x = sampler.sampler_step(sigma, nxt, denoiser, x, cond, uc, **kw)
    return x


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("HeunEDMSampler", {"s_churn": 2.0}),
        ("DPMPP2SAncestralSampler", {"eta": 0.7}),
        ("EulerAncestralSampler", {}),
        ("DPMPP2MSampler", {}),
    ],
)
def test_sampler_step_loop_equals_the_sampler_bit_for_bit(name, kwargs):
    sampler = _ours(name, **kwargs)
    x = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(8))
    extra = {"shift": torch.full((1,), -0.1), "gain": 1.1}
    gammas = None
    if isinstance(sampler, sampling.EDMSampler):
        gammas = [sampler.churn_gamma(s, STEPS + 1) for s in sampler.discretization(STEPS)]
    torch.manual_seed(2)
    ours = sampler(_KwargsDenoiser(), x, {}, **extra)
    torch.manual_seed(2)
    assert torch.equal(_hand_loop(sampler, _KwargsDenoiser(), x, gammas, **extra), ours)
