"""Denoiser preconditioning: ``D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)``."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

Scalings = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class DenoiserScaling(ABC):
    """Maps noise levels ``sigma`` to ``(c_skip, c_out, c_in, c_noise)``."""

    @abstractmethod
    def __call__(self, sigma: torch.Tensor) -> Scalings:
        """Return ``(c_skip, c_out, c_in, c_noise)`` for ``sigma``."""


class EDMScaling(DenoiserScaling):
    """Karras et al. (2022), Table 1: EDM preconditioning, data std ``sigma_data``."""

    def __init__(self, sigma_data: float = 0.5) -> None:
        self.sigma_data = sigma_data

    def __call__(self, sigma: torch.Tensor) -> Scalings:
        c_skip = self.sigma_data**2 / (sigma**2 + self.sigma_data**2)
        c_out = sigma * self.sigma_data / (sigma**2 + self.sigma_data**2) ** 0.5
        c_in = 1 / (sigma**2 + self.sigma_data**2) ** 0.5
        c_noise = 0.25 * sigma.log()
        return c_skip, c_out, c_in, c_noise


class EpsScaling(DenoiserScaling):
    """Epsilon prediction (DDPM) in variance-exploding form; c_noise = sigma."""

    def __call__(self, sigma: torch.Tensor) -> Scalings:
        c_skip = torch.ones_like(sigma)
        c_out = -sigma
        c_in = 1 / (sigma**2 + 1.0) ** 0.5
        c_noise = sigma.clone()
        return c_skip, c_out, c_in, c_noise


class VScaling(DenoiserScaling):
    """v-prediction (Salimans & Ho, 2022) with unit data std; c_noise = sigma."""

    def __call__(self, sigma: torch.Tensor) -> Scalings:
        c_skip = 1.0 / (sigma**2 + 1.0)
        c_out = -sigma / (sigma**2 + 1.0) ** 0.5
        c_in = 1.0 / (sigma**2 + 1.0) ** 0.5
        c_noise = sigma.clone()
        return c_skip, c_out, c_in, c_noise


class VScalingWithEDMcNoise(DenoiserScaling):
    """v-prediction scalings with EDM noise conditioning ``0.25 ln sigma`` (SVD)."""

    def __call__(self, sigma: torch.Tensor) -> Scalings:
        c_skip = 1.0 / (sigma**2 + 1.0)
        c_out = -sigma / (sigma**2 + 1.0) ** 0.5
        c_in = 1.0 / (sigma**2 + 1.0) ** 0.5
        c_noise = 0.25 * sigma.log()
        return c_skip, c_out, c_in, c_noise
