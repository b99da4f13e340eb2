"""Noise-level schedules (discretizations of sigma) used by samplers and denoisers."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch

from ...util import append_zero
from .util import make_beta_schedule


def generate_roughly_equally_spaced_steps(num_substeps: int, max_step: int) -> np.ndarray:
    """``num_substeps`` ascending integer timesteps in last ``max_step - 1``."""
    return np.linspace(max_step - 1, 0, num_substeps, endpoint=False).astype(int)[::-1]


def trailing_steps(num_substeps: int, max_step: int) -> np.ndarray:
    """``num_substeps`` ascending integer timesteps ending at ``max_step - 1``, spaced
    ``max_step / num_substeps`` apart (diffusers' ``timestep_spacing="trailing"``)."""
    return (np.arange(max_step, 0, -max_step / num_substeps).round() - 1).astype(int)[::-1]


SPACINGS = {"original": generate_roughly_equally_spaced_steps, "trailing": trailing_steps}


def edm_sigmas(
    n: int,
    sigma_min: float,
    sigma_max: float,
    rho: float,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Karras et al. (2022), eq. 5: ``n`` sigmas from ``sigma_max`` to ``sigma_min``."""
    ramp = torch.linspace(0, 1, n, device=device)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def ddpm_sigmas(
    alphas_cumprod: np.ndarray,
    n: int,
    device: torch.device | str | None = None,
    spacing: str = "original",
) -> torch.Tensor:
    """``sqrt((1 - abar) / abar)`` at ``n`` evenly spread DDPM steps, descending
    (``spacing``: a key of ``SPACINGS``)."""
    num_timesteps = len(alphas_cumprod)
    if n > num_timesteps:
        raise ValueError(f"cannot take n={n} sigmas from a schedule of {num_timesteps} timesteps")
    if n < num_timesteps:
        alphas_cumprod = alphas_cumprod[SPACINGS[spacing](n, num_timesteps)]
    # The ratio is formed in float64 and rounded to float32 before the square root.
    ratio = torch.tensor((1 - alphas_cumprod) / alphas_cumprod, dtype=torch.float32, device=device)
    return torch.flip(ratio**0.5, (0,))


class Discretization(ABC):
    """A noise schedule; calling it gives descending sigmas (final 0 by default)."""

    def __call__(
        self,
        n: int,
        do_append_zero: bool = True,
        device: torch.device | str | None = "cpu",
        flip: bool = False,
    ) -> torch.Tensor:
        """``n`` descending sigmas (+ 0 if ``do_append_zero``); flipped if ``flip``."""
        sigmas = self.get_sigmas(n, device=device)
        sigmas = append_zero(sigmas) if do_append_zero else sigmas
        return torch.flip(sigmas, (0,)) if flip else sigmas

    @abstractmethod
    def get_sigmas(self, n: int, device: torch.device | str | None = "cpu") -> torch.Tensor:
        """``n`` descending sigmas."""


class EDMDiscretization(Discretization):
    """Karras et al. (2022) schedule, evenly spaced in ``sigma^(1/rho)``."""

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> None:
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.rho = rho

    def get_sigmas(self, n: int, device: torch.device | str | None = "cpu") -> torch.Tensor:
        return edm_sigmas(n, self.sigma_min, self.sigma_max, self.rho, device=device)


class LegacyDDPMDiscretization(Discretization):
    """Stable Diffusion's discrete DDPM schedule (linear in sqrt(beta)) as sigmas.

    ``timestep_spacing``: ``"original"`` (this library's and the original's steps) or
    ``"trailing"`` (steps end at the last timestep, as diffusers'
    ``timestep_spacing="trailing"``; what SDXL-Lightning and SDXL-Turbo-style few-step
    models were distilled on).
    """

    def __init__(
        self,
        linear_start: float = 0.00085,
        linear_end: float = 0.0120,
        num_timesteps: int = 1000,
        timestep_spacing: str = "original",
    ) -> None:
        if timestep_spacing not in SPACINGS:
            raise ValueError(
                f"timestep_spacing must be one of {sorted(SPACINGS)}, got {timestep_spacing!r}"
            )
        self.timestep_spacing = timestep_spacing
        self.num_timesteps = num_timesteps
        betas = make_beta_schedule(
            "linear", num_timesteps, linear_start=linear_start, linear_end=linear_end
        )
        self.alphas_cumprod = np.cumprod(1.0 - betas, axis=0)

    def get_sigmas(self, n: int, device: torch.device | str | None = "cpu") -> torch.Tensor:
        return ddpm_sigmas(self.alphas_cumprod, n, device=device, spacing=self.timestep_spacing)
