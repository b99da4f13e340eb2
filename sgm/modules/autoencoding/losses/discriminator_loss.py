"""Reconstruction (L1 + LPIPS, learned log-variance) plus adaptive PatchGAN loss."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ....util import default, instantiate_from_config
from ..lpips.loss.lpips import LPIPS
from ..lpips.model.model import weights_init
from ..lpips.vqperceptual import hinge_d_loss, vanilla_d_loss

logger = logging.getLogger(__name__)

DISC_LOSSES = {"hinge": hinge_d_loss, "vanilla": vanilla_d_loss}


class GeneralLPIPSWithDiscriminator(nn.Module):
    """Autoencoder loss of VQGAN (Esser et al., 2021) with a learned output log-variance.

    ``optimizer_idx=0`` gives the autoencoder loss: ``sum(|x - x_hat| + w_p LPIPS) /
    exp(logvar) + logvar`` per sample, plus regularization terms weighted by
    ``regularization_weights`` and, from ``disc_start`` on, the generator loss
    scaled by the adaptive weight ``||grad nll|| / ||grad g||`` at the last layer.
    ``optimizer_idx=1`` gives the discriminator loss. ``lpips_kwargs`` go to
    :class:`LPIPS` (e.g. ``weights_path``, or ``pretrained: false``).
    """

    forward_keys = ["optimizer_idx", "global_step", "last_layer", "split", "regularization_log"]

    def __init__(
        self,
        disc_start: int,
        logvar_init: float = 0.0,
        disc_num_layers: int = 3,
        disc_in_channels: int = 3,
        disc_factor: float = 1.0,
        disc_weight: float = 1.0,
        perceptual_weight: float = 1.0,
        disc_loss: str = "hinge",
        scale_input_to_tgt_size: bool = False,
        dims: int = 2,
        learn_logvar: bool = False,
        regularization_weights: Mapping[str, float] | None = None,
        additional_log_keys: Sequence[str] | None = None,
        discriminator_config: Mapping[str, Any] | None = None,
        lpips_kwargs: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        if disc_loss not in DISC_LOSSES:
            raise ValueError(
                f"unknown disc_loss {disc_loss!r}; expected one of {sorted(DISC_LOSSES)}"
            )
        self.dims = dims
        if dims > 2:
            logger.info("dims=%d: LPIPS is applied to each frame independently", dims)
        self.scale_input_to_tgt_size = scale_input_to_tgt_size
        self.perceptual_loss = LPIPS(**dict(lpips_kwargs or {})).eval()
        self.perceptual_weight = perceptual_weight
        self.logvar = nn.Parameter(torch.full((), float(logvar_init)), requires_grad=learn_logvar)
        self.learn_logvar = learn_logvar
        discriminator_config = default(
            discriminator_config,
            {
                "target": "sgm.modules.autoencoding.lpips.model.model.NLayerDiscriminator",
                "params": {
                    "input_nc": disc_in_channels,
                    "n_layers": disc_num_layers,
                    "use_actnorm": False,
                },
            },
        )
        self.discriminator = instantiate_from_config(discriminator_config).apply(weights_init)
        self.discriminator_iter_start = disc_start
        self.disc_loss = DISC_LOSSES[disc_loss]
        self.disc_factor = disc_factor
        self.discriminator_weight = disc_weight
        self.regularization_weights = {
            k: float(v) for k, v in (regularization_weights or {}).items()
        }
        self.additional_log_keys = set(additional_log_keys or [])
        self.additional_log_keys.update(self.regularization_weights)

    def get_trainable_parameters(self) -> Iterator[nn.Parameter]:
        return self.discriminator.parameters()

    def get_trainable_autoencoder_parameters(self) -> Iterator[nn.Parameter]:
        if self.learn_logvar:
            yield self.logvar
        yield from ()

    @torch.no_grad()
    def log_images(self, inputs: torch.Tensor, reconstructions: torch.Tensor) -> dict:
        """Discriminator logit maps (real | fake), upsampled to the input size, in [-1, 1]."""
        logits_real = self.discriminator(inputs.contiguous())
        if logits_real.ndim < 4:
            return dict()
        logits_fake = self.discriminator(reconstructions.contiguous())
        high = max(logits_fake.abs().max().item(), logits_real.abs().max().item(), 1e-8)
        maps = [
            F.interpolate(logits / high, size=inputs.shape[-2:], mode="nearest").expand(
                -1, 3, -1, -1
            )
            for logits in (logits_real, logits_fake)
        ]
        return {"vis_logits": torch.cat(maps, dim=-1)}

    def calculate_adaptive_weight(
        self, nll_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor
    ) -> torch.Tensor:
        """``disc_weight * ||d nll / d w|| / (||d g / d w|| + 1e-4)``, clamped to [0, 1e4]."""
        nll_grads = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
        g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
        d_weight = torch.norm(nll_grads) / (torch.norm(g_grads) + 1e-4)
        return torch.clamp(d_weight, 0.0, 1e4).detach() * self.discriminator_weight

    def get_nll_loss(
        self, rec_loss: torch.Tensor, weights: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        nll_loss = rec_loss / torch.exp(self.logvar) + self.logvar
        weighted = nll_loss if weights is None else weights * nll_loss
        return torch.sum(nll_loss) / nll_loss.shape[0], torch.sum(weighted) / weighted.shape[0]

    def forward(
        self,
        inputs: torch.Tensor,
        reconstructions: torch.Tensor,
        *,
        regularization_log: Mapping[str, torch.Tensor],
        optimizer_idx: int,
        global_step: int,
        last_layer: torch.Tensor,
        split: str = "train",
        weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict]:
        if self.scale_input_to_tgt_size:
            inputs = F.interpolate(
                inputs, reconstructions.shape[2:], mode="bicubic", antialias=True
            )
        if self.dims > 2:
            inputs, reconstructions = (
                rearrange(x, "b c t h w -> (b t) c h w") for x in (inputs, reconstructions)
            )
        rec_loss = torch.abs(inputs.contiguous() - reconstructions.contiguous())
        if self.perceptual_weight > 0:
            p_loss = self.perceptual_loss(inputs.contiguous(), reconstructions.contiguous())
            rec_loss = rec_loss + self.perceptual_weight * p_loss
        if optimizer_idx == 0:
            return self._generator_loss(
                rec_loss,
                reconstructions,
                regularization_log,
                global_step,
                last_layer,
                split,
                weights,
            )
        if optimizer_idx == 1:
            return self._discriminator_loss(inputs, reconstructions, global_step, split)
        raise ValueError(f"unknown optimizer_idx {optimizer_idx}; expected 0 or 1")

    def _gan_active(self, global_step: int) -> bool:
        return global_step >= self.discriminator_iter_start or not self.training

    def _generator_loss(
        self, rec_loss, reconstructions, regularization_log, global_step, last_layer, split, weights
    ):
        nll_loss, weighted_nll_loss = self.get_nll_loss(rec_loss, weights)
        if self._gan_active(global_step):
            logits_fake = self.discriminator(reconstructions.contiguous())
            g_loss = -torch.mean(logits_fake)
            if self.training:
                d_weight = self.calculate_adaptive_weight(nll_loss, g_loss, last_layer=last_layer)
            else:
                d_weight = torch.tensor(1.0, device=rec_loss.device)
        else:
            d_weight = torch.tensor(0.0, device=rec_loss.device)
            g_loss = torch.tensor(0.0, requires_grad=True, device=rec_loss.device)
        loss = weighted_nll_loss + d_weight * self.disc_factor * g_loss
        for name, value in regularization_log.items():
            if name in self.regularization_weights:
                loss = loss + self.regularization_weights[name] * value
        logged = {
            name: value.float()
            for name, value in regularization_log.items()
            if name in self.additional_log_keys
        }
        logged.update(
            {
                "loss/total": loss,
                "loss/nll": nll_loss,
                "loss/rec": rec_loss,
                "loss/g": g_loss,
                "scalars/logvar": self.logvar,
                "scalars/d_weight": d_weight,
            }
        )
        return loss, _log_under(split, logged)

    def _discriminator_loss(self, inputs, reconstructions, global_step, split):
        logits_real = self.discriminator(inputs.contiguous().detach())
        logits_fake = self.discriminator(reconstructions.contiguous().detach())
        if self._gan_active(global_step):
            d_loss = self.disc_factor * self.disc_loss(logits_real, logits_fake)
        else:
            d_loss = torch.tensor(0.0, requires_grad=True, device=inputs.device)
        logged = {"loss/disc": d_loss, "logits/real": logits_real, "logits/fake": logits_fake}
        return d_loss, _log_under(split, logged)


def _log_under(split: str, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Logged scalars: each value detached and averaged, its name under ``split/``."""
    return {f"{split}/{name}": value.detach().mean() for name, value in values.items()}
