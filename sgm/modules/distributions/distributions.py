"""Latent distributions of the VAE: diagonal Gaussian posterior, Dirac, Gaussian KL."""

from __future__ import annotations

import math

import torch


class AbstractDistribution:
    """A distribution that can be sampled and has a mode."""

    def sample(self) -> torch.Tensor:
        raise NotImplementedError()

    def mode(self) -> torch.Tensor:
        raise NotImplementedError()


class DiracDistribution(AbstractDistribution):
    """All mass at ``value``."""

    def __init__(self, value: torch.Tensor):
        self.value = value

    def sample(self) -> torch.Tensor:
        return self.value

    def mode(self) -> torch.Tensor:
        return self.value


class DiagonalGaussianDistribution:
    """Gaussian with diagonal covariance; ``parameters`` = [mean, logvar] along dim 1.

    ``logvar`` is clamped to [-30, 20]. ``deterministic=True`` makes it a point mass
    at the mean (zero variance, zero KL/NLL).
    """

    def __init__(self, parameters: torch.Tensor, deterministic: bool = False):
        self.parameters = parameters
        self.mean, self.logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(self.logvar, -30.0, 20.0)
        self.deterministic = deterministic
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)
        if deterministic:
            self.var = self.std = torch.zeros_like(self.mean)

    def _dims(self) -> list[int]:
        return list(range(1, self.mean.ndim))

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """``mean + std * eps``, eps drawn on the mean's device (optionally seeded)."""
        eps = torch.randn(
            self.mean.shape,
            generator=generator,
            device=self.mean.device,
            dtype=self.mean.dtype,
        )
        return self.mean + self.std * eps

    def kl(self, other: DiagonalGaussianDistribution | None = None) -> torch.Tensor:
        """KL(self || other) per sample, summed over non-batch dims (other: N(0, I))."""
        if self.deterministic:
            return torch.zeros(1, device=self.mean.device)
        if other is None:
            return 0.5 * torch.sum(
                self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=self._dims()
            )
        return 0.5 * torch.sum(
            (self.mean - other.mean).pow(2) / other.var
            + self.var / other.var
            - 1.0
            - self.logvar
            + other.logvar,
            dim=self._dims(),
        )

    def nll(
        self, sample: torch.Tensor, dims: list[int] | tuple[int, ...] = (1, 2, 3)
    ) -> torch.Tensor:
        """Negative log-likelihood of ``sample``, summed over ``dims``."""
        if self.deterministic:
            return torch.zeros(1, device=self.mean.device)
        return 0.5 * torch.sum(
            math.log(2.0 * math.pi) + self.logvar + (sample - self.mean).pow(2) / self.var,
            dim=list(dims),
        )

    def mode(self) -> torch.Tensor:
        return self.mean


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """Elementwise KL between two Gaussians given means and log-variances (broadcasts)."""
    tensor = next(
        (x for x in (mean1, logvar1, mean2, logvar2) if isinstance(x, torch.Tensor)), None
    )
    if tensor is None:
        raise ValueError("normal_kl needs at least one tensor argument")
    logvar1, logvar2 = (
        x if isinstance(x, torch.Tensor) else torch.tensor(x).to(tensor) for x in (logvar1, logvar2)
    )
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2).pow(2) * torch.exp(-logvar2)
    )
