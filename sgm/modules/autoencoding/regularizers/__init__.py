"""Latent regularizers: diagonal Gaussian (KL), identity, vector quantizers."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from ...distributions.distributions import DiagonalGaussianDistribution
from .base import AbstractRegularizer, IdentityRegularizer, measure_perplexity

__all__ = [
    "AbstractRegularizer",
    "DiagonalGaussianRegularizer",
    "IdentityRegularizer",
    "measure_perplexity",
]


class DiagonalGaussianRegularizer(AbstractRegularizer):
    """Reads moments as a diagonal Gaussian; returns a sample (or the mean) and its KL.

    The log holds ``kl_loss``: KL to N(0, I), summed over latent dims, mean over batch.
    """

    def __init__(self, sample: bool = True):
        super().__init__()
        self.sample = sample

    def get_trainable_parameters(self) -> Iterator[nn.Parameter]:
        yield from ()

    def forward(
        self, z: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict]:
        posterior = DiagonalGaussianDistribution(z)
        z = posterior.sample(generator) if self.sample else posterior.mode()
        kl_loss = posterior.kl()
        return z, {"kl_loss": torch.sum(kl_loss) / kl_loss.shape[0]}
