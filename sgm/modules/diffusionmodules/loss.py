"""The denoising score-matching loss ``w(sigma) || D(x + sigma n, sigma) - x ||``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ...util import append_dims, instantiate_from_config

LOSS_TYPES = ("l2", "l1", "lpips")


def offset_noise_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    """Shape of the offset noise: one value per (sample, channel), shared over space.

    For 5-D video input ``(b, t, c, h, w)`` the offset is also shared over the frames.
    """
    if len(input_shape) == 5:
        return (input_shape[0], 1, input_shape[2])
    return (input_shape[0], input_shape[1])


class StandardDiffusionLoss(nn.Module):
    """Weighted denoising loss with noise levels from a sigma sampler.

    Args:
        sigma_sampler_config: config of a sigma sampler (``sampler(n) -> sigmas``).
        loss_weighting_config: config of a loss weighting ``w(sigma)``.
        loss_type: ``"l2"``, ``"l1"`` or ``"lpips"`` (the last needs the LPIPS network).
        offset_noise_level: std of a per-channel constant added to the noise.
        batch2model_keys: batch entries passed to the network as keyword arguments.
    """

    def __init__(
        self,
        sigma_sampler_config: Mapping[str, Any],
        loss_weighting_config: Mapping[str, Any],
        loss_type: str = "l2",
        offset_noise_level: float = 0.0,
        batch2model_keys: str | Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type={loss_type!r}; expected one of {LOSS_TYPES}")
        self.sigma_sampler = instantiate_from_config(sigma_sampler_config)
        self.loss_weighting = instantiate_from_config(loss_weighting_config)
        self.loss_type = loss_type
        self.offset_noise_level = offset_noise_level
        if loss_type == "lpips":
            from ..autoencoding.lpips.loss.lpips import LPIPS

            self.lpips = LPIPS().eval()
        if not batch2model_keys:
            batch2model_keys = []
        if isinstance(batch2model_keys, str):
            batch2model_keys = [batch2model_keys]
        self.batch2model_keys = set(batch2model_keys)

    def get_noised_input(
        self, sigmas_bc: torch.Tensor, noise: torch.Tensor, input: torch.Tensor
    ) -> torch.Tensor:
        """``input + sigma * noise`` (``sigmas_bc`` already broadcastable)."""
        return input + noise * sigmas_bc

    def forward(
        self,
        network: nn.Module,
        denoiser: nn.Module,
        conditioner: nn.Module,
        input: torch.Tensor,
        batch: Mapping[str, Any],
    ) -> torch.Tensor:
        """Per-sample loss (B,) of clean ``input``; cond is ``conditioner(batch)``."""
        cond = conditioner(batch)
        return self._forward(network, denoiser, cond, input, batch)

    def _forward(
        self,
        network: nn.Module,
        denoiser: nn.Module,
        cond: Mapping[str, Any],
        input: torch.Tensor,
        batch: Mapping[str, Any],
    ) -> torch.Tensor:
        additional_model_inputs = {
            key: batch[key] for key in self.batch2model_keys.intersection(batch)
        }
        sigmas = self.sigma_sampler(input.shape[0]).to(input)
        noise = torch.randn_like(input)
        if self.offset_noise_level > 0.0:
            offset = torch.randn(offset_noise_shape(input.shape), device=input.device)
            noise = noise + self.offset_noise_level * append_dims(offset, input.ndim)
        sigmas_bc = append_dims(sigmas, input.ndim)
        noised_input = self.get_noised_input(sigmas_bc, noise, input)
        model_output = denoiser(network, noised_input, sigmas, cond, **additional_model_inputs)
        w = append_dims(self.loss_weighting(sigmas), input.ndim)
        return self.get_loss(model_output, input, w)

    def get_loss(
        self, model_output: torch.Tensor, target: torch.Tensor, w: torch.Tensor
    ) -> torch.Tensor:
        """Per-sample mean of the weighted error (B,)."""
        if self.loss_type == "l2":
            return torch.mean((w * (model_output - target) ** 2).reshape(target.shape[0], -1), 1)
        if self.loss_type == "l1":
            return torch.mean((w * (model_output - target).abs()).reshape(target.shape[0], -1), 1)
        return self.lpips(model_output, target).reshape(-1)
