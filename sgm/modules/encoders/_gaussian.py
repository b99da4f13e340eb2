"""``GaussianEncoder``: a VAE encoder with a diagonal-Gaussian posterior as embedder."""

from __future__ import annotations

from typing import Any

import torch
from einops import rearrange

from ..autoencoding.regularizers import DiagonalGaussianRegularizer
from ..diffusionmodules.model import Encoder
from ._base import AbstractEmbModel


class GaussianEncoder(Encoder, AbstractEmbModel):
    """Encodes images, samples the posterior: returns ``(log, z)`` with the KL loss in
    ``log["loss"]`` and ``z`` flattened to tokens ``(B, h*w, C)`` by default."""

    def __init__(
        self, weight: float = 1.0, flatten_output: bool = True, *args: Any, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.posterior = DiagonalGaussianRegularizer()
        self.weight = weight
        self.flatten_output = flatten_output

    def forward(self, x: torch.Tensor) -> tuple[dict, torch.Tensor]:
        z = super().forward(x)
        z, log = self.posterior(z)
        log["loss"] = log["kl_loss"]
        log["weight"] = self.weight
        if self.flatten_output:
            z = rearrange(z, "b c h w -> b (h w) c")
        return log, z
