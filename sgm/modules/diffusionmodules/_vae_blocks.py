"""Building blocks of the convolutional VAE: resnet blocks, resampling, attention."""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..attention import LinearAttention, MemoryEfficientCrossAttention, scaled_dot_product

logger = logging.getLogger(__name__)

ATTN_TYPES = (
    "vanilla",
    "vanilla-xformers",
    "memory-efficient-cross-attn",
    "linear",
    "none",
)


def get_timestep_embedding(timesteps: torch.Tensor, embedding_dim: int) -> torch.Tensor:
    """Sinusoidal embedding of 1-D ``timesteps``: ``[sin, cos]`` halves (DDPM)."""
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps must be 1-D, got shape {tuple(timesteps.shape)}")
    half_dim = embedding_dim // 2
    exponent = math.log(10000) / (half_dim - 1)
    freqs = torch.exp(
        torch.arange(half_dim, dtype=torch.float32, device=timesteps.device) * -exponent
    )
    args = timesteps.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if embedding_dim % 2 == 1:
        emb = F.pad(emb, (0, 1, 0, 0))
    return emb


def nonlinearity(x: torch.Tensor) -> torch.Tensor:
    """Swish / SiLU."""
    return F.silu(x)


def Normalize(in_channels: int, num_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with eps 1e-6, the VAE's normalisation layer."""
    return nn.GroupNorm(num_groups=num_groups, num_channels=in_channels, eps=1e-6, affine=True)


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling, optionally followed by a 3x3 convolution."""

    def __init__(self, in_channels: int, with_conv: bool):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.with_conv else x


class Downsample(nn.Module):
    """2x downsampling: stride-2 3x3 convolution after (0, 1, 0, 1) padding, or avg-pool."""

    def __init__(self, in_channels: int, with_conv: bool):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_conv:
            return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0))
        return F.avg_pool2d(x, kernel_size=2, stride=2)


class ResnetBlock(nn.Module):
    """Pre-activation resnet block with an optional timestep-embedding projection."""

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int | None = None,
        conv_shortcut: bool = False,
        dropout: float = 0.0,
        temb_channels: int = 512,
    ):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.use_conv_shortcut = conv_shortcut
        self.norm1 = Normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if temb_channels > 0:
            self.temb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = Normalize(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if in_channels != out_channels:
            if conv_shortcut:
                self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
            else:
                self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1, 1, 0)

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels == self.out_channels:
            return x
        return self.conv_shortcut(x) if self.use_conv_shortcut else self.nin_shortcut(x)

    def forward(
        self,
        x: torch.Tensor,
        temb: torch.Tensor | None = None,
        consume_input: bool = False,
        **kwargs: Any,
    ) -> torch.Tensor:
        """(B, C_in, H, W), temb (B, temb_channels) or None -> (B, C_out, H, W).

        ``consume_input``: the caller hands ``x`` over and never reads it again; without
        autograd a block that changes the channel count then projects the shortcut first
        and keeps the activation in ``x``'s storage (same numbers, one input-sized
        tensor fewer during ``conv1``)."""
        # One name for the running value, so each step's input is freed once the next
        # exists; without autograd the activation overwrites the normalised tensor. At most
        # three full-resolution tensors are then alive (x, a conv's input and output).
        inplace = not torch.is_grad_enabled()
        skip = None
        if inplace and consume_input and self.in_channels != self.out_channels:
            skip = self._shortcut(x)
            h = x.copy_(F.silu(self.norm1(x), inplace=True))
        else:
            h = F.silu(self.norm1(x), inplace=inplace)
        h = self.conv1(h)
        if temb is not None:
            h = h + self.temb_proj(nonlinearity(temb))[:, :, None, None]
        h = self.norm2(h)
        h = F.silu(h, inplace=inplace)
        h = self.dropout(h)
        h = self.conv2(h)
        return (self._shortcut(x) if skip is None else skip) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all ``h * w`` positions, with 1x1-conv q/k/v."""

    attention_request = "sdpa"

    def __init__(self, in_channels: int):
        super().__init__()
        self.in_channels = in_channels
        self.norm = Normalize(in_channels)
        self.q = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)
        self.k = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)
        self.v = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)
        self.proj_out = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)

    def attention(self, h_: torch.Tensor) -> torch.Tensor:
        """Normalised attention output before ``proj_out``: (B, C, H, W)."""
        h_ = self.norm(h_)
        b, c, h, w = h_.shape
        q, k, v = (
            rearrange(t, "b c h w -> b 1 (h w) c").contiguous()
            for t in (self.q(h_), self.k(h_), self.v(h_))
        )
        out = scaled_dot_product(q, k, v, backend=self.attention_request)
        return rearrange(out, "b 1 (h w) c -> b c h w", h=h, w=w)

    def forward(self, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return x + self.proj_out(self.attention(x))


class MemoryEfficientAttnBlock(AttnBlock):
    """:class:`AttnBlock` asking for the xformers backend (same weights; SDPA without it)."""

    attention_request = "xformers"


class LinAttnBlock(LinearAttention):
    """Linear attention with one head as wide as the input."""

    def __init__(self, in_channels: int):
        super().__init__(dim=in_channels, heads=1, dim_head=in_channels)

    def forward(self, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return super().forward(x)


class MemoryEfficientCrossAttentionWrapper(MemoryEfficientCrossAttention):
    """Cross-attention on a feature map, added residually: (B, C, H, W) -> same."""

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        **unused_kwargs: Any,
    ) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = rearrange(x, "b c h w -> b (h w) c")
        out = super().forward(tokens, context=context, mask=mask)
        return x + rearrange(out, "b (h w) c -> b c h w", h=h, w=w)


class IdentityAttn(nn.Identity):
    """No attention (``attn_type="none"``); ignores extra keyword arguments."""

    def forward(self, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return x


def make_attn(
    in_channels: int, attn_type: str = "vanilla", attn_kwargs: dict | None = None
) -> nn.Module:
    """The attention layer for ``attn_type`` (one of ``ATTN_TYPES``)."""
    if attn_type not in ATTN_TYPES:
        raise ValueError(
            f"unknown attn_type {attn_type!r}; expected one of {', '.join(ATTN_TYPES)}"
        )
    if attn_type == "vanilla":
        return AttnBlock(in_channels)
    if attn_type == "vanilla-xformers":
        return MemoryEfficientAttnBlock(in_channels)
    if attn_type == "memory-efficient-cross-attn":
        return MemoryEfficientCrossAttentionWrapper(
            **{**dict(attn_kwargs or {}), "query_dim": in_channels}
        )
    if attn_type == "none":
        return IdentityAttn()
    return LinAttnBlock(in_channels)
