"""Latent-space regression loss with an LPIPS term on decoded images."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ....util import instantiate_from_config
from ..lpips.loss.lpips import LPIPS


class LatentLPIPS(nn.Module):
    """``latent_weight * ||z - z_hat||^2 + perceptual_weight * LPIPS(D(z), D(z_hat))``.

    ``decoder_config`` builds an autoencoder whose ``decode`` is used (its encoder is
    dropped). ``lpips_kwargs`` go to :class:`LPIPS` (e.g. ``weights_path``).
    """

    def __init__(
        self,
        decoder_config: Mapping[str, Any],
        perceptual_weight: float = 1.0,
        latent_weight: float = 1.0,
        scale_input_to_tgt_size: bool = False,
        scale_tgt_to_input_size: bool = False,
        perceptual_weight_on_inputs: float = 0.0,
        lpips_kwargs: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        self.scale_input_to_tgt_size = scale_input_to_tgt_size
        self.scale_tgt_to_input_size = scale_tgt_to_input_size
        self.init_decoder(decoder_config)
        self.perceptual_loss = LPIPS(**dict(lpips_kwargs or {})).eval()
        self.perceptual_weight = perceptual_weight
        self.latent_weight = latent_weight
        self.perceptual_weight_on_inputs = perceptual_weight_on_inputs

    def init_decoder(self, config: Mapping[str, Any]) -> None:
        self.decoder = instantiate_from_config(config)
        if hasattr(self.decoder, "encoder"):
            del self.decoder.encoder

    def forward(
        self,
        latent_inputs: torch.Tensor,
        latent_predictions: torch.Tensor,
        image_inputs: torch.Tensor,
        split: str = "train",
    ) -> tuple[torch.Tensor, dict]:
        log = dict()
        loss = (latent_inputs - latent_predictions) ** 2
        log[f"{split}/latent_l2_loss"] = loss.mean().detach()
        image_reconstructions = None
        if self.perceptual_weight > 0.0:
            image_reconstructions = self.decoder.decode(latent_predictions)
            image_targets = self.decoder.decode(latent_inputs)
            perceptual_loss = self.perceptual_loss(
                image_targets.contiguous(), image_reconstructions.contiguous()
            )
            loss = (
                self.latent_weight * loss.mean() + self.perceptual_weight * perceptual_loss.mean()
            )
            log[f"{split}/perceptual_loss"] = perceptual_loss.mean().detach()
        if self.perceptual_weight_on_inputs > 0.0:
            if image_reconstructions is None:
                image_reconstructions = self.decoder.decode(latent_predictions)
            if self.scale_input_to_tgt_size:
                image_inputs = F.interpolate(
                    image_inputs, image_reconstructions.shape[2:], mode="bicubic", antialias=True
                )
            elif self.scale_tgt_to_input_size:
                image_reconstructions = F.interpolate(
                    image_reconstructions, image_inputs.shape[2:], mode="bicubic", antialias=True
                )
            perceptual_loss2 = self.perceptual_loss(
                image_inputs.contiguous(), image_reconstructions.contiguous()
            )
            loss = loss + self.perceptual_weight_on_inputs * perceptual_loss2.mean()
            log[f"{split}/perceptual_loss_on_inputs"] = perceptual_loss2.mean().detach()
        return loss, log
