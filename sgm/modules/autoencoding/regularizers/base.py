"""Regularizer interface for autoencoder latents, and codebook perplexity."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn


class AbstractRegularizer(nn.Module):
    """Maps an encoder output to a latent and a log dict (losses, statistics)."""

    @abstractmethod
    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError()

    @abstractmethod
    def get_trainable_parameters(self) -> Iterator[nn.Parameter]:
        raise NotImplementedError()


class IdentityRegularizer(AbstractRegularizer):
    """Passes the latent through unchanged."""

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, dict]:
        return z, dict()

    def get_trainable_parameters(self) -> Iterator[nn.Parameter]:
        yield from ()


def measure_perplexity(
    predicted_indices: torch.Tensor, num_centroids: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Codebook perplexity ``exp(H(p))`` of the index histogram, and #codes used."""
    encodings = F.one_hot(predicted_indices, num_centroids).float().reshape(-1, num_centroids)
    avg_probs = encodings.mean(0)
    perplexity = (-(avg_probs * torch.log(avg_probs + 1e-10)).sum()).exp()
    cluster_use = torch.sum(avg_probs > 0)
    return perplexity, cluster_use
