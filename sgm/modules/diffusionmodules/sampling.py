"""Diffusion samplers: Euler/Heun (EDM), ancestral, DPM-Solver++ and linear multistep.

Every sampler is called the same way::

    x = sampler(denoiser, x, cond, uc=None, num_steps=None, generator=None,
                callback=None, **denoiser_kwargs)

``x`` is unit Gaussian noise (scaled by ``sqrt(1 + sigma_0^2)`` first) and
``denoiser(x, sigma, cond, **denoiser_kwargs)`` returns the denoised estimate. Fresh noise
comes from ``generator`` when given, else from the global torch random stream, drawn in a
fixed order so ``torch.manual_seed`` reproduces a sample. After each step ``callback``
receives k-diffusion's dictionary ``{"i", "sigma", "sigma_hat", "x", "denoised"}``: the
step index, the schedule's level, the level the network saw, the state the network saw
and its denoised estimate.

One loop (:meth:`BaseDiffusionSampler.__call__`) drives every sampler through its
:meth:`~BaseDiffusionSampler.loop_step`, which keeps solver state (DPM++ 2M's previous
estimate, LMS's derivative history) in a dictionary that lives for one run. The loop reads
the schedule to the host once, before the first step, and decides there which steps land
on sigma = 0 (and so skip a second network evaluation): the steps themselves never wait
for the device. ``sampler_step`` and ``prepare_sampling_loop`` remain for scripts that
write their own loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ...util import append_dims
from ._sampler_base import (  # noqa: F401  (public names of this module)
    DEFAULT_GUIDER,
    ZERO_SIGMA,
    BaseDiffusionSampler,
    Callback,
    Cond,
    Denoiser,
    Step,
    StepInputs,
    StepResult,
)
from .distilled import LCMSampler  # noqa: F401  (few-step sampler, selectable by name here)
from .sampling_utils import (
    dpmpp_2m_step,
    dpmpp_2s_midpoint,
    dpmpp_2s_update,
    euler_step,
    get_ancestral_step,
    heun_correction,
    linear_multistep_coeff,
    to_d,
)


class SingleStepDiffusionSampler(BaseDiffusionSampler):
    """A sampler whose update uses only the current state."""

    def sampler_step(self, sigma, next_sigma, denoiser, x, cond, uc, *args, **kwargs):
        """One step ``sigma -> next_sigma``."""
        raise NotImplementedError

    def euler_step(self, x: torch.Tensor, d: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        """``x + dt d``."""
        return euler_step(x, d, dt)


class EDMSampler(SingleStepDiffusionSampler):
    """Karras et al. (2022), Algorithm 2: deterministic steps with optional churn.

    Args:
        s_churn: total churn; each step inside ``[s_tmin, s_tmax]`` raises sigma by
            ``gamma = min(s_churn / (num_sigmas - 1), sqrt(2) - 1)`` with fresh noise.
        s_tmin, s_tmax: sigma range where churn applies.
        s_noise: std multiplier of the churn noise.
    """

    def __init__(
        self,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.s_churn = s_churn
        self.s_tmin = s_tmin
        self.s_tmax = s_tmax
        self.s_noise = s_noise

    def churn_gamma(self, sigma: torch.Tensor | float, num_sigmas: int) -> float:
        """Karras et al. (2022), eq. 7 gamma for a step starting at ``sigma``."""
        if self.s_tmin <= float(sigma) <= self.s_tmax:
            return min(self.s_churn / (num_sigmas - 1), 2**0.5 - 1)
        return 0.0

    def loop_step(self, step, x, denoiser, cond, uc, state, **denoiser_kwargs):
        gamma = self.churn_gamma(step.schedule[step.i], step.num_sigmas)
        return self._step(
            step.sigma, step.next_sigma, denoiser, x, cond, uc, gamma, step.final, denoiser_kwargs
        )

    def sampler_step(
        self, sigma, next_sigma, denoiser, x, cond, uc=None, gamma=0.0, **denoiser_kwargs
    ) -> torch.Tensor:
        """Churn to ``sigma_hat = sigma (1 + gamma)``, then an Euler (or Heun) step."""
        return self._step(sigma, next_sigma, denoiser, x, cond, uc, gamma, None, denoiser_kwargs).x

    def _step(self, sigma, next_sigma, denoiser, x, cond, uc, gamma, final, kwargs):
        sigma_hat = sigma * (gamma + 1.0)
        if gamma > 0:
            eps = self.randn_like(x) * self.s_noise
            x = x + eps * append_dims(sigma_hat**2 - sigma**2, x.ndim) ** 0.5
        denoised = self.denoise(x, denoiser, sigma_hat, cond, uc, **kwargs)
        d = to_d(x, sigma_hat, denoised)
        dt = append_dims(next_sigma - sigma_hat, x.ndim)
        x_euler = self.euler_step(x, d, dt)
        x_next = self.possible_correction_step(
            x_euler, x, d, dt, next_sigma, denoiser, cond, uc, final=final, **kwargs
        )
        return StepResult(x_next, x, denoised, gamma)

    def possible_correction_step(
        self, euler_step, x, d, dt, next_sigma, denoiser, cond, uc, final=None, **kwargs
    ) -> torch.Tensor:
        """No correction: keep the Euler step."""
        return euler_step


class EulerEDMSampler(EDMSampler):
    """Karras et al. (2022), Algorithm 2 with Euler steps."""


class HeunEDMSampler(EDMSampler):
    """Karras et al. (2022), Algorithm 2 with Heun steps (Euler into sigma = 0)."""

    def possible_correction_step(
        self, euler_step, x, d, dt, next_sigma, denoiser, cond, uc, final=None, **kwargs
    ) -> torch.Tensor:
        """Heun correction where ``next_sigma > 0``.

        ``final`` (known on the host) says every level is 0: the second network
        evaluation is skipped; None reads it from ``next_sigma``.
        """
        if final is None:
            final = bool(torch.sum(next_sigma) < ZERO_SIGMA)
        if final:
            return euler_step
        denoised = self.denoise(euler_step, denoiser, next_sigma, cond, uc, **kwargs)
        d_new = to_d(euler_step, next_sigma, denoised)
        x_heun = heun_correction(x, d, d_new, dt)
        return torch.where(append_dims(next_sigma, x.ndim) > 0.0, x_heun, euler_step)


class AncestralSampler(SingleStepDiffusionSampler):
    """Ancestral sampling: a step to ``sigma_down`` plus fresh noise ``sigma_up``.

    Args:
        eta: noise amount (0: deterministic, 1: full ancestral step).
        s_noise: std multiplier of the added noise.

    ``noise_sampler(x)`` gives the added noise; it defaults to :meth:`randn_like`
    and may be replaced by any callable returning noise shaped like ``x``.
    """

    def __init__(self, eta: float = 1.0, s_noise: float = 1.0, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.eta = eta
        self.s_noise = s_noise
        self.noise_sampler: Callable[[torch.Tensor], torch.Tensor] = self.randn_like

    def ancestral_euler_step(self, x, denoised, sigma, sigma_down) -> torch.Tensor:
        """Euler step of the probability-flow ODE from ``sigma`` to ``sigma_down``."""
        d = to_d(x, sigma, denoised)
        dt = append_dims(sigma_down - sigma, x.ndim)
        return self.euler_step(x, d, dt)

    def ancestral_step(self, x, sigma, next_sigma, sigma_up) -> torch.Tensor:
        """Add ``s_noise * sigma_up`` std noise where ``next_sigma > 0``."""
        if not torch.is_tensor(sigma_up):
            sigma_up = torch.full_like(next_sigma, sigma_up)
        # Drawn even where discarded: the random stream advances once per step.
        noisy = x + self.noise_sampler(x) * self.s_noise * append_dims(sigma_up, x.ndim)
        return torch.where(append_dims(next_sigma, x.ndim) > 0.0, noisy, x)

    def loop_step(self, step, x, denoiser, cond, uc, state, **denoiser_kwargs):
        return self._step(
            step.sigma, step.next_sigma, denoiser, x, cond, uc, step.final, denoiser_kwargs
        )

    def sampler_step(
        self, sigma, next_sigma, denoiser, x, cond, uc=None, **denoiser_kwargs
    ) -> torch.Tensor:
        """One ancestral step ``sigma -> next_sigma``."""
        return self._step(sigma, next_sigma, denoiser, x, cond, uc, None, denoiser_kwargs).x

    def _step(self, sigma, next_sigma, denoiser, x, cond, uc, final, kwargs) -> StepResult:
        raise NotImplementedError


class EulerAncestralSampler(AncestralSampler):
    """Ancestral sampling with Euler steps."""

    def _step(self, sigma, next_sigma, denoiser, x, cond, uc, final, kwargs):
        sigma_down, sigma_up = get_ancestral_step(sigma, next_sigma, eta=self.eta)
        denoised = self.denoise(x, denoiser, sigma, cond, uc, **kwargs)
        x_next = self.ancestral_euler_step(x, denoised, sigma, sigma_down)
        return StepResult(self.ancestral_step(x_next, sigma, next_sigma, sigma_up), x, denoised)


class DPMPP2SAncestralSampler(AncestralSampler):
    """Lu et al. (2022): ancestral DPM-Solver++(2S) (two network calls per step)."""

    def final_steps(self, schedule: np.ndarray) -> list[bool]:
        """Per step, on the host: is ``sigma_down`` 0 (Euler, one network call)?"""
        levels = torch.from_numpy(schedule)
        down, _ = get_ancestral_step(levels[:-1], levels[1:], eta=self.eta)
        return [bool(s < ZERO_SIGMA) for s in down.tolist()]

    def _step(self, sigma, next_sigma, denoiser, x, cond, uc, final, kwargs):
        sigma_down, sigma_up = get_ancestral_step(sigma, next_sigma, eta=self.eta)
        denoised = self.denoise(x, denoiser, sigma, cond, uc, **kwargs)
        x_euler = self.ancestral_euler_step(x, denoised, sigma, sigma_down)
        if final is None:
            final = bool(torch.sum(sigma_down) < ZERO_SIGMA)
        if final:
            # Every target level is 0: skip the second network evaluation.
            x_next = x_euler
        else:
            x_mid, sigma_mid = dpmpp_2s_midpoint(x, denoised, sigma, sigma_down)
            denoised_mid = self.denoise(x_mid, denoiser, sigma_mid, cond, uc, **kwargs)
            x_dpmpp2s = dpmpp_2s_update(x, denoised_mid, sigma, sigma_down)
            x_next = torch.where(append_dims(sigma_down, x.ndim) > 0.0, x_dpmpp2s, x_euler)
        return StepResult(self.ancestral_step(x_next, sigma, next_sigma, sigma_up), x, denoised)


class LinearMultistepSampler(BaseDiffusionSampler):
    """Linear multistep (Adams-Bashforth in sigma) of order up to ``order``."""

    def __init__(self, order: int = 4, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.order = order

    def loop_step(self, step, x, denoiser, cond, uc, state, **denoiser_kwargs):
        """Keeps the last ``order`` derivatives in ``state["ds"]``."""
        ds = state.setdefault("ds", [])
        denoised = self.denoise(x, denoiser, step.sigma, cond, uc, **denoiser_kwargs)
        ds.append(to_d(x, step.sigma, denoised))
        if len(ds) > self.order:
            ds.pop(0)
        cur_order = min(step.i + 1, self.order)
        coeffs = [
            linear_multistep_coeff(cur_order, step.schedule, step.i, j) for j in range(cur_order)
        ]
        x_next = x + sum(coeff * d for coeff, d in zip(coeffs, reversed(ds), strict=True))
        return StepResult(x_next, x, denoised)


class DPMPP2MSampler(BaseDiffusionSampler):
    """Lu et al. (2022): DPM-Solver++(2M), second-order multistep."""

    def sampler_step(
        self,
        old_denoised,
        previous_sigma,
        sigma,
        next_sigma,
        denoiser,
        x,
        cond,
        uc=None,
        final=None,
        **denoiser_kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step; returns the new ``x`` and this step's denoised estimate."""
        denoised = self.denoise(x, denoiser, sigma, cond, uc, **denoiser_kwargs)
        x = dpmpp_2m_step(x, denoised, old_denoised, previous_sigma, sigma, next_sigma, final=final)
        return x, denoised

    def loop_step(self, step, x, denoiser, cond, uc, state, **denoiser_kwargs):
        """Keeps the previous denoised estimate in ``state["old_denoised"]``."""
        x_next, denoised = self.sampler_step(
            state.get("old_denoised"),
            step.prev_sigma,
            step.sigma,
            step.next_sigma,
            denoiser,
            x,
            cond,
            uc=uc,
            final=step.final,
            **denoiser_kwargs,
        )
        state["old_denoised"] = denoised
        return StepResult(x_next, x, denoised)
