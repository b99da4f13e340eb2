"""Small embedders: identity, class labels, sinusoidal numbers, rescaling, low-res images."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from einops import rearrange
from torch import nn

from ...errors import ConfigError
from ...util import default, instantiate_from_config
from ..diffusionmodules.util import extract_into_tensor, make_beta_schedule
from ..layers import timestep_embedding
from ._base import AbstractEmbModel


class IdentityEncoder(AbstractEmbModel):
    """Returns its input unchanged."""

    def encode(self, x: Any) -> Any:
        """Same as calling the module."""
        return x

    def forward(self, x: Any) -> Any:
        return x


class ClassEmbedder(AbstractEmbModel):
    """Learned embedding of integer class labels: (B,) -> (B, D), or (B, 1, D) with
    ``add_sequence_dim``. Weights: ``embedding.weight``."""

    def __init__(
        self, embed_dim: int, n_classes: int = 1000, add_sequence_dim: bool = False
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_classes, embed_dim)
        self.n_classes = n_classes
        self.add_sequence_dim = add_sequence_dim

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        c = self.embedding(c)
        if self.add_sequence_dim:
            c = c[:, None, :]
        return c

    def get_unconditional_conditioning(
        self, bs: int, device: str | torch.device | None = None
    ) -> dict[str, torch.Tensor]:
        """A batch of the last class id (the one reserved for "no class")."""
        device = default(device, self.embedding.weight.device)
        uc = torch.full((bs,), self.n_classes - 1, dtype=torch.long, device=device)
        return {self.input_key: uc}


class ClassEmbedderForMultiCond(ClassEmbedder):
    """``ClassEmbedder`` on a batch dict: returns a copy with ``batch[key]`` embedded
    (a one-element list stays a one-element list)."""

    def forward(self, batch: Mapping[str, Any], key: str | None = None) -> dict[str, Any]:
        key = default(key, self.input_key)
        value = batch[key]
        is_list = isinstance(value, list)
        embedded = super().forward(value[0] if is_list else value)
        return {**batch, key: [embedded] if is_list else embedded}


class ConcatTimestepEmbedderND(AbstractEmbModel):
    """Sinusoidal embedding of each column of (B,) or (B, d) numbers, flattened to
    (B, d * outdim) (sizes, crops, fps, motion, camera angles). No weights."""

    def __init__(self, outdim: int) -> None:
        super().__init__()
        self.outdim = outdim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 1:
            x = x[:, None]
        if x.ndim != 2:
            raise ValueError(f"expected (B,) or (B, d) numbers, got shape {tuple(x.shape)}")
        b, d = x.shape
        emb = timestep_embedding(rearrange(x, "b d -> (b d)"), self.outdim)
        return rearrange(emb, "(b d) d2 -> b (d d2)", b=b, d=d, d2=self.outdim)


class SpatialRescaler(nn.Module):
    """Resizes by ``multiplier`` ``n_stages`` times, then optionally maps channels with a
    convolution (``channel_mapper``). ``wrap_video`` handles (B, C, T, H, W)."""

    METHODS = ("nearest", "linear", "bilinear", "trilinear", "bicubic", "area")

    def __init__(
        self,
        n_stages: int = 1,
        method: str = "bilinear",
        multiplier: float = 0.5,
        in_channels: int = 3,
        out_channels: int | None = None,
        bias: bool = False,
        wrap_video: bool = False,
        kernel_size: int = 1,
        remap_output: bool = False,
    ) -> None:
        super().__init__()
        if n_stages < 0:
            raise ConfigError(f"SpatialRescaler n_stages must be >= 0, got {n_stages}")
        if method not in self.METHODS:
            raise ConfigError(f"SpatialRescaler method {method!r} not in {self.METHODS}")
        self.n_stages = n_stages
        self.multiplier = multiplier
        self.interpolator = functools.partial(nn.functional.interpolate, mode=method)
        self.remap_output = out_channels is not None or remap_output
        if self.remap_output:
            self.channel_mapper = nn.Conv2d(
                in_channels,
                default(out_channels, in_channels),
                kernel_size=kernel_size,
                bias=bias,
                padding=kernel_size // 2,
            )
        self.wrap_video = wrap_video

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        video = self.wrap_video and x.ndim == 5
        if video:
            b, t = x.shape[0], x.shape[2]
            x = rearrange(x, "b c t h w -> (b t) c h w")
        for _ in range(self.n_stages):
            x = self.interpolator(x, scale_factor=self.multiplier)
        if video:
            x = rearrange(x, "(b t) c h w -> b c t h w", b=b, t=t)
        if self.remap_output:
            x = self.channel_mapper(x)
        return x

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Same as calling the module."""
        return self(x)


class LowScaleEncoder(nn.Module):
    """Encodes a low-resolution image with a first-stage model and noises the latent at
    a random DDPM level below ``max_noise_level``: returns ``(z, noise_level)``."""

    def __init__(
        self,
        model_config: Mapping[str, Any],
        linear_start: float,
        linear_end: float,
        timesteps: int = 1000,
        max_noise_level: int = 250,
        output_size: int | None = 64,
        scale_factor: float = 1.0,
    ) -> None:
        super().__init__()
        self.max_noise_level = max_noise_level
        self.model = instantiate_from_config(model_config)
        self.register_schedule(
            timesteps=timesteps, linear_start=linear_start, linear_end=linear_end
        )
        self.out_size = output_size
        self.scale_factor = scale_factor

    def register_schedule(
        self,
        beta_schedule: str = "linear",
        timesteps: int = 1000,
        linear_start: float = 1e-4,
        linear_end: float = 2e-2,
        cosine_s: float = 8e-3,
    ) -> None:
        """Register the DDPM schedule buffers (betas, cumulative alphas and roots)."""
        betas = make_beta_schedule(beta_schedule, timesteps, linear_start, linear_end, cosine_s)
        alphas_cumprod = np.cumprod(1.0 - betas, axis=0)
        self.num_timesteps = int(betas.shape[0])
        self.linear_start = linear_start
        self.linear_end = linear_end
        buffers = {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": np.append(1.0, alphas_cumprod[:-1]),
            "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - alphas_cumprod),
            "log_one_minus_alphas_cumprod": np.log(1.0 - alphas_cumprod),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod - 1),
        }
        for name, value in buffers.items():
            self.register_buffer(name, torch.tensor(value, dtype=torch.float32))

    def q_sample(
        self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Sample q(x_t | x_0) (Ho et al., 2020, eq. 4)."""
        noise = default(noise, lambda: torch.randn_like(x_start))
        return (
            extract_into_tensor(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
            + extract_into_tensor(self.sqrt_one_minus_alphas_cumprod, t, x_start.shape) * noise
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.model.encode(x)
        if hasattr(z, "sample") and not isinstance(z, torch.Tensor):
            z = z.sample()
        z = z * self.scale_factor
        noise_level = torch.randint(0, self.max_noise_level, (x.shape[0],), device=x.device)
        z = self.q_sample(z, noise_level)
        if self.out_size is not None:
            z = nn.functional.interpolate(z, size=self.out_size, mode="nearest")
        return z, noise_level

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Undo the scale and decode with the first-stage model."""
        return self.model.decode(z / self.scale_factor)


class InceptionV3(nn.Module):
    """pytorch-fid's InceptionV3 (input resized to 299), outputs squeezed."""

    def __init__(self, normalize_input: bool = False, **kwargs: Any) -> None:
        super().__init__()
        try:
            from pytorch_fid import inception
        except ImportError:
            raise ImportError(
                "InceptionV3 needs the 'pytorch-fid' package (pip install pytorch-fid)"
            ) from None
        kwargs["resize_input"] = True
        self.model = inception.InceptionV3(normalize_input=normalize_input, **kwargs)

    def forward(self, inp: torch.Tensor) -> Any:
        outp = self.model(inp)
        if len(outp) == 1:
            return outp[0].squeeze()
        return outp
