"""Image-to-video conditioners: VAE latents of the conditioning frames, CLIP embeddings."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from einops import rearrange, repeat

from ... import precision
from ...util import append_dims, instantiate_from_config
from ._base import AbstractEmbModel


class VideoPredictionEmbedderWithEncoder(AbstractEmbModel):
    """Encodes conditioning frames ``(B*n_cond_frames, 3, H, W)`` with a first-stage model.

    Latents are multiplied by ``scale_factor``. With one conditioning frame they are
    stacked per sample and repeated ``n_copies`` times, ``(B*n_copies, C, h, w)``;
    with several they stay one per frame. A ``sigma_sampler_config`` adds
    ``sigma * noise`` before encoding, and a ``sigma_cond_config`` also returns an
    embedding of those sigmas with as many rows as the latents (``B*n_copies`` or
    ``B*n_cond_frames``). Weights: ``encoder.*`` (and ``sigma_cond.*``).
    """

    def __init__(
        self,
        n_cond_frames: int,
        n_copies: int,
        encoder_config: Mapping[str, Any],
        sigma_sampler_config: Mapping[str, Any] | None = None,
        sigma_cond_config: Mapping[str, Any] | None = None,
        is_ae: bool = False,
        scale_factor: float = 1.0,
        disable_encoder_autocast: bool = False,
        en_and_decode_n_samples_a_time: int | None = None,
    ) -> None:
        super().__init__()
        self.n_cond_frames = n_cond_frames
        self.n_copies = n_copies
        self.encoder = instantiate_from_config(encoder_config)
        self.sigma_sampler = (
            instantiate_from_config(sigma_sampler_config)
            if sigma_sampler_config is not None
            else None
        )
        self.sigma_cond = (
            instantiate_from_config(sigma_cond_config) if sigma_cond_config is not None else None
        )
        self.is_ae = is_ae
        self.scale_factor = scale_factor
        self.disable_encoder_autocast = disable_encoder_autocast
        self.en_and_decode_n_samples_a_time = en_and_decode_n_samples_a_time

    def _add_noise(self, vid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        b = vid.shape[0] // self.n_cond_frames
        sigmas = self.sigma_sampler(b).to(vid.device)
        sigma_cond = None
        if self.sigma_cond is not None:
            sigma_cond = self.sigma_cond(sigmas)
            # One row per conditioning frame, or per copy of a single frame.
            rows = self.n_copies if self.n_cond_frames == 1 else self.n_cond_frames
            sigma_cond = repeat(sigma_cond, "b d -> (b t) d", t=rows)
        sigmas = repeat(sigmas, "b -> (b t)", t=self.n_cond_frames)
        noise = torch.randn_like(vid)
        return vid + noise * append_dims(sigmas, vid.ndim), sigma_cond

    def _encode(self, vid: torch.Tensor) -> torch.Tensor:
        n_samples = self.en_and_decode_n_samples_a_time or vid.shape[0]
        encode = self.encoder.encode if self.is_ae else self.encoder
        if self.disable_encoder_autocast:
            # float32 inside, whatever autocast the caller opened
            context = precision.float32(vid)
            vid = precision.to_float32(vid)
        else:
            context = precision.accelerator_autocast(vid)
        with context:
            chunks = [
                encode(vid[n * n_samples : (n + 1) * n_samples])
                for n in range(math.ceil(vid.shape[0] / n_samples))
            ]
        return torch.cat(chunks, dim=0)

    def forward(self, vid: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        sigma_cond = None
        if self.sigma_sampler is not None:
            vid, sigma_cond = self._add_noise(vid)
        vid = self._encode(vid) * self.scale_factor
        if self.n_cond_frames == 1:
            vid = rearrange(vid, "(b t) c h w -> b () (t c) h w", t=self.n_cond_frames)
            vid = repeat(vid, "b 1 c h w -> (b t) c h w", t=self.n_copies)
        if self.sigma_cond is not None:
            return vid, sigma_cond
        return vid


class FrozenOpenCLIPImagePredictionEmbedder(AbstractEmbModel):
    """CLIP embeddings of ``n_cond_frames`` frames per sample, ``(B*n_copies, T, D)``.

    Weights: ``open_clip.*`` (the wrapped ``FrozenOpenCLIPImageEmbedder``).
    """

    def __init__(
        self,
        open_clip_embedding_config: Mapping[str, Any],
        n_cond_frames: int,
        n_copies: int,
    ) -> None:
        super().__init__()
        self.n_cond_frames = n_cond_frames
        self.n_copies = n_copies
        self.open_clip = instantiate_from_config(open_clip_embedding_config)

    def forward(self, vid: torch.Tensor) -> torch.Tensor:
        vid = self.open_clip(vid)
        vid = rearrange(vid, "(b t) d -> b t d", t=self.n_cond_frames)
        return repeat(vid, "b t d -> (b s) t d", s=self.n_copies)
