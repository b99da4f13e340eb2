"""Training noise-level samplers: ``sampler(n_samples, rand=None) -> sigmas (n,)``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ...util import instantiate_from_config


class EDMSampling:
    """Karras et al. (2022): ``ln sigma ~ N(p_mean, p_std^2)``; ``rand``: normals."""

    def __init__(self, p_mean: float = -1.2, p_std: float = 1.2) -> None:
        self.p_mean = p_mean
        self.p_std = p_std

    def __call__(self, n_samples: int, rand: torch.Tensor | None = None) -> torch.Tensor:
        if rand is None:
            rand = torch.randn((n_samples,))
        log_sigma = self.p_mean + self.p_std * rand
        return log_sigma.exp()


class DiscreteSampling:
    """Uniform choice among ``num_idx`` discrete levels; ``rand`` gives the indices."""

    def __init__(
        self,
        discretization_config: Mapping[str, Any],
        num_idx: int,
        do_append_zero: bool = False,
        flip: bool = True,
    ) -> None:
        self.num_idx = num_idx
        self.sigmas = instantiate_from_config(discretization_config)(
            num_idx, do_append_zero=do_append_zero, flip=flip
        )

    def idx_to_sigma(self, idx: torch.Tensor | int) -> torch.Tensor:
        """Table sigma at ``idx``."""
        return self.sigmas[idx]

    def __call__(self, n_samples: int, rand: torch.Tensor | None = None) -> torch.Tensor:
        if rand is None:
            rand = torch.randint(0, self.num_idx, (n_samples,))
        return self.idx_to_sigma(rand)


class ZeroSampler:
    """A (near-)zero noise level ``1e-5`` for every sample."""

    def __call__(self, n_samples: int, rand: torch.Tensor | None = None) -> torch.Tensor:
        if rand is None:
            # Drawn only to keep the global random stream aligned with other samplers.
            rand = torch.randn((n_samples,))
        return torch.zeros_like(rand) + 1.0e-5
