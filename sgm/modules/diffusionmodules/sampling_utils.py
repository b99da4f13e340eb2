"""Pure numerics of the samplers: ODE derivative, ancestral split, solver steps."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ...util import append_dims


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """Karras et al. (2022), eq. 3: probability-flow ODE ``(x - D(x)) / sigma``."""
    return (x - denoised) / append_dims(sigma, x.ndim)


def to_neg_log_sigma(sigma: torch.Tensor) -> torch.Tensor:
    """``t = -ln sigma`` (the DPM-Solver time variable)."""
    return sigma.log().neg()


def to_sigma(neg_log_sigma: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_neg_log_sigma`."""
    return neg_log_sigma.neg().exp()


def get_ancestral_step(
    sigma_from: torch.Tensor, sigma_to: torch.Tensor, eta: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor | float]:
    """Split a step ``sigma_from -> sigma_to`` into a deterministic part down to
    ``sigma_down`` and fresh noise of std ``sigma_up`` (``eta`` scales the noise)."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = torch.minimum(
        sigma_to,
        eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5,
    )
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def linear_multistep_coeff(
    order: int, t: Sequence[float] | np.ndarray, i: int, j: int, epsrel: float = 1e-4
) -> float:
    """Adams-Bashforth weight of the derivative at ``t[i - j]`` for ``t[i] -> t[i+1]``.

    The weight is the integral over ``[t[i], t[i+1]]`` of the Lagrange basis polynomial
    through ``t[i], ..., t[i - order + 1]``; Gauss-Legendre quadrature with ``order``
    nodes integrates that degree ``order - 1`` polynomial exactly. ``epsrel`` is
    accepted for call compatibility and unused.
    """
    if order - 1 > i:
        raise ValueError(f"Order {order} too high for step {i}")
    t = np.asarray(t, dtype=np.float64)
    nodes, weights = np.polynomial.legendre.leggauss(order)
    lo, hi = t[i], t[i + 1]
    tau = 0.5 * (hi - lo) * nodes + 0.5 * (hi + lo)
    basis = np.ones_like(tau)
    for k in range(order):
        if k != j:
            basis *= (tau - t[i - k]) / (t[i - j] - t[i - k])
    return float(0.5 * (hi - lo) * np.dot(weights, basis))


def euler_step(x: torch.Tensor, d: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
    """One explicit Euler step ``x + dt d``."""
    return x + dt * d


def heun_correction(
    x: torch.Tensor,
    d: torch.Tensor,
    d_next: torch.Tensor,
    dt: torch.Tensor,
) -> torch.Tensor:
    """Karras et al. (2022), Algorithm 1 line 8: step with the mean derivative."""
    d_prime = (d + d_next) / 2.0
    return x + d_prime * dt


def dpmpp_2s_midpoint(
    x: torch.Tensor,
    denoised: torch.Tensor,
    sigma: torch.Tensor,
    sigma_down: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DPM-Solver++(2S) first stage: ``(x_mid, sigma_mid)`` at the log-midpoint.

    Lu et al. (2022), DPM-Solver++ Algorithm 1 with ``r = 1/2``.
    """
    t, t_next = to_neg_log_sigma(sigma), to_neg_log_sigma(sigma_down)
    h = t_next - t
    s = t + 0.5 * h
    mult1 = append_dims(to_sigma(s) / to_sigma(t), x.ndim)
    mult2 = append_dims((-0.5 * h).expm1(), x.ndim)
    return mult1 * x - mult2 * denoised, to_sigma(s)


def dpmpp_2s_update(
    x: torch.Tensor,
    denoised_mid: torch.Tensor,
    sigma: torch.Tensor,
    sigma_down: torch.Tensor,
) -> torch.Tensor:
    """DPM-Solver++(2S) second stage: step to ``sigma_down`` from the midpoint."""
    t, t_next = to_neg_log_sigma(sigma), to_neg_log_sigma(sigma_down)
    h = t_next - t
    mult3 = append_dims(to_sigma(t_next) / to_sigma(t), x.ndim)
    mult4 = append_dims((-h).expm1(), x.ndim)
    return mult3 * x - mult4 * denoised_mid


def dpmpp_2m_step(
    x: torch.Tensor,
    denoised: torch.Tensor,
    old_denoised: torch.Tensor | None,
    sigma_prev: torch.Tensor | None,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    final: bool | None = None,
) -> torch.Tensor:
    """Lu et al. (2022), DPM-Solver++(2M): one step ``sigma -> sigma_next``.

    Without a previous denoised estimate (first step) or when every ``sigma_next`` is 0
    this is the first-order DPM-Solver++ step; otherwise the second-order multistep
    update, applied where ``sigma_next > 0``. ``final`` tells (from the host's copy of
    the schedule) that every ``sigma_next`` is 0; None reads it from the device.
    """
    t, t_next = to_neg_log_sigma(sigma), to_neg_log_sigma(sigma_next)
    h = t_next - t
    mult1 = append_dims(to_sigma(t_next) / to_sigma(t), x.ndim)
    mult2 = append_dims((-h).expm1(), x.ndim)
    x_standard = mult1 * x - mult2 * denoised
    if final is None:
        final = bool(torch.sum(sigma_next) < 1e-14)
    if old_denoised is None or sigma_prev is None or final:
        return x_standard
    r = (t - to_neg_log_sigma(sigma_prev)) / h
    mult3 = append_dims(1 + 1 / (2 * r), x.ndim)
    mult4 = append_dims(1 / (2 * r), x.ndim)
    denoised_d = mult3 * denoised - mult4 * old_denoised
    x_advanced = mult1 * x - mult2 * denoised_d
    return torch.where(append_dims(sigma_next, x.ndim) > 0.0, x_advanced, x_standard)
