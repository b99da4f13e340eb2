"""Per-noise-level loss weights ``lambda(sigma)`` for the denoising loss."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class DiffusionLossWeighting(ABC):
    """Maps noise levels ``sigma`` to loss weights."""

    @abstractmethod
    def __call__(self, sigma: torch.Tensor) -> torch.Tensor:
        """Return the weight for each entry of ``sigma``."""


class UnitWeighting(DiffusionLossWeighting):
    """Weight 1 at every noise level."""

    def __call__(self, sigma: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(sigma)


class EDMWeighting(DiffusionLossWeighting):
    """Karras et al. (2022), Table 1: ``(sigma^2 + sd^2) / (sigma sd)^2``."""

    def __init__(self, sigma_data: float = 0.5) -> None:
        self.sigma_data = sigma_data

    def __call__(self, sigma: torch.Tensor) -> torch.Tensor:
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2


class VWeighting(EDMWeighting):
    """EDM weighting with ``sigma_data = 1`` (the v-prediction weighting)."""

    def __init__(self) -> None:
        super().__init__(sigma_data=1.0)


class EpsWeighting(DiffusionLossWeighting):
    """``sigma^-2``: the epsilon-prediction loss expressed on the denoised output."""

    def __call__(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma**-2.0
