"""Video decoder of SVD: the VAE decoder with temporal mixing layers.

Inputs are frame batches ``(B*T, C, h, w)``; ``timesteps=T`` tells each block how
to regroup frames into clips. ``time_mode`` picks where time mixing happens:
``conv-only`` (temporal resnet blocks and a 3-D output convolution; the released
SVD checkpoints), ``attn-only`` (temporal attention only) or ``all``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from einops import rearrange, repeat
from torch import nn

from ..blending import blend, mix_alpha, register_mix_factor
from ..diffusionmodules._vae_blocks import AttnBlock, MemoryEfficientAttnBlock, ResnetBlock
from ..diffusionmodules._video_blocks import temporal_resblock
from ..diffusionmodules.model import Decoder, make_attn
from ..layers import Conv3d, timestep_embedding
from ..video_attention import VideoTransformerBlock

MERGE_STRATEGIES = ("fixed", "learned")


def _mix_factor(module: nn.Module, alpha: float, merge_strategy: str) -> None:
    """The block's own ``mix_factor`` (blender rule, frames only: fixed or learned)."""
    register_mix_factor(module, merge_strategy, alpha, MERGE_STRATEGIES)
    module.merge_strategy = merge_strategy


class VideoResBlock(ResnetBlock):
    """Spatial resnet block followed by a temporal 3-D resnet block, blended by alpha.

    Output: ``alpha * temporal(x) + (1 - alpha) * x`` with ``x`` the spatial output.
    """

    def __init__(
        self,
        out_channels: int,
        *args: Any,
        dropout: float = 0.0,
        video_kernel_size: int | Sequence[int] | None = 3,
        alpha: float = 0.0,
        merge_strategy: str = "learned",
        **kwargs: Any,
    ):
        super().__init__(*args, out_channels=out_channels, dropout=dropout, **kwargs)
        if video_kernel_size is None:
            video_kernel_size = [3, 1, 1]
        self.time_stack = temporal_resblock(
            out_channels, 0, dropout, video_kernel_size, skip_t_emb=True
        )
        _mix_factor(self, alpha, merge_strategy)

    def get_alpha(self, bs: int | None = None) -> torch.Tensor:
        return mix_alpha(self.merge_strategy, self.mix_factor)

    def forward(
        self,
        x: torch.Tensor,
        temb: torch.Tensor | None,
        skip_video: bool = False,
        timesteps: int | None = None,
    ) -> torch.Tensor:
        """(B*T, C, H, W) -> (B*T, C_out, H, W)."""
        timesteps = _frames(self, timesteps)
        x = super().forward(x, temb)
        if skip_video:
            return x
        x = rearrange(x, "(b t) c h w -> b c t h w", t=timesteps)
        x_time = self.time_stack(x, temb)
        x = blend(self.get_alpha(), x_time, x, dtype=x.dtype)
        return rearrange(x, "b c t h w -> (b t) c h w")


class AE3DConv(nn.Conv2d):
    """2-D convolution followed by a 3-D convolution across frames (``time_mix_conv``)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        video_kernel_size: int | Sequence[int] = 3,
        *args: Any,
        **kwargs: Any,
    ):
        super().__init__(in_channels, out_channels, *args, **kwargs)
        video_kernel_size = _kernel(video_kernel_size)
        if isinstance(video_kernel_size, tuple):
            padding = [k // 2 for k in video_kernel_size]
        else:
            padding = video_kernel_size // 2
        self.time_mix_conv = Conv3d(
            in_channels=out_channels,
            out_channels=out_channels,
            kernel_size=video_kernel_size,
            padding=padding,
        )

    def forward(
        self, input: torch.Tensor, timesteps: int | None = None, skip_video: bool = False
    ) -> torch.Tensor:
        x = super().forward(input)
        if skip_video:
            return x
        if timesteps is None:
            raise ValueError("AE3DConv needs timesteps (the number of frames per clip)")
        x = rearrange(x, "(b t) c h w -> b c t h w", t=timesteps)
        x = self.time_mix_conv(x)
        return rearrange(x, "b c t h w -> (b t) c h w")


class VideoBlock(AttnBlock):
    """Spatial attention block whose tokens also pass a temporal transformer, blended."""

    attn_mode = "softmax"

    def __init__(self, in_channels: int, alpha: float = 0, merge_strategy: str = "learned"):
        super().__init__(in_channels)
        self.time_mix_block = VideoTransformerBlock(
            dim=in_channels,
            n_heads=1,
            d_head=in_channels,
            checkpoint=False,
            ff_in=True,
            attn_mode=self.attn_mode,
        )
        time_embed_dim = self.in_channels * 4
        self.video_time_embed = nn.Sequential(
            nn.Linear(self.in_channels, time_embed_dim),
            nn.SiLU(),
            nn.Linear(time_embed_dim, self.in_channels),
        )
        _mix_factor(self, alpha, merge_strategy)

    def get_alpha(self) -> torch.Tensor:
        return mix_alpha(self.merge_strategy, self.mix_factor)

    def forward(
        self, x: torch.Tensor, timesteps: int | None = None, skip_video: bool = False
    ) -> torch.Tensor:
        """(B*T, C, H, W) -> same."""
        if skip_video:
            return super().forward(x)
        timesteps = _frames(self, timesteps)
        x_in = x
        x = self.attention(x)
        h, w = x.shape[2:]
        x = rearrange(x, "b c h w -> b (h w) c")
        frame_ids = torch.arange(timesteps, device=x.device)
        frame_ids = repeat(frame_ids, "t -> (b t)", b=x.shape[0] // timesteps)
        t_emb = timestep_embedding(frame_ids, self.in_channels, repeat_only=False)
        emb = self.video_time_embed(t_emb.to(x.dtype))[:, None, :]
        x_mix = self.time_mix_block(x + emb, timesteps=timesteps)
        x = blend(self.get_alpha(), x, x_mix)
        x = rearrange(x, "b (h w) c -> b c h w", h=h, w=w)
        return x_in + self.proj_out(x)


class MemoryEfficientVideoBlock(VideoBlock):
    """:class:`VideoBlock` asking for the xformers backend (same weights)."""

    attn_mode = "softmax-xformers"
    attention_request = MemoryEfficientAttnBlock.attention_request


def make_time_attn(
    in_channels: int,
    attn_type: str = "vanilla",
    attn_kwargs: dict | None = None,
    alpha: float = 0,
    merge_strategy: str = "learned",
) -> nn.Module:
    """A spatio-temporal attention block for ``attn_type`` vanilla / vanilla-xformers."""
    classes = {"vanilla": VideoBlock, "vanilla-xformers": MemoryEfficientVideoBlock}
    if attn_type not in classes:
        raise ValueError(
            f"temporal attention supports attn_type {sorted(classes)}, got {attn_type!r}"
        )
    return classes[attn_type](in_channels, alpha=alpha, merge_strategy=merge_strategy)


class Conv2DWrapper(nn.Conv2d):
    """A 2-D convolution that ignores extra keyword arguments (e.g. ``timesteps``)."""

    def forward(self, input: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return super().forward(input)


class VideoDecoder(Decoder):
    """:class:`Decoder` with temporal mixing; call with ``timesteps=T`` frames per clip."""

    available_time_modes = ["all", "conv-only", "attn-only"]

    def __init__(
        self,
        *args: Any,
        video_kernel_size: int | Sequence[int] = 3,
        alpha: float = 0.0,
        merge_strategy: str = "learned",
        time_mode: str = "conv-only",
        **kwargs: Any,
    ):
        if time_mode not in self.available_time_modes:
            raise ValueError(
                f"unknown time_mode {time_mode!r}; expected one of {self.available_time_modes}"
            )
        self.video_kernel_size = _kernel(video_kernel_size)
        self.alpha = alpha
        self.merge_strategy = merge_strategy
        self.time_mode = time_mode
        super().__init__(*args, **kwargs)

    def get_last_layer(self, skip_time_mix: bool = False, **kwargs: Any) -> torch.Tensor:
        if self.time_mode == "attn-only":
            return self.conv_out.weight
        return self.conv_out.weight if skip_time_mix else self.conv_out.time_mix_conv.weight

    def _make_attn(self) -> Callable[..., nn.Module]:
        if self.time_mode == "conv-only":
            return make_attn
        return functools.partial(
            _make_time_attn_or_none, alpha=self.alpha, merge_strategy=self.merge_strategy
        )

    def _make_conv(self) -> Callable[..., nn.Module]:
        if self.time_mode == "attn-only":
            return Conv2DWrapper
        return functools.partial(AE3DConv, video_kernel_size=self.video_kernel_size)

    def _make_resblock(self) -> Callable[..., nn.Module]:
        if self.time_mode == "attn-only":
            return super()._make_resblock()
        return functools.partial(
            VideoResBlock,
            video_kernel_size=self.video_kernel_size,
            alpha=self.alpha,
            merge_strategy=self.merge_strategy,
        )


def _make_time_attn_or_none(
    in_channels: int, attn_type: str = "vanilla", **kwargs: Any
) -> nn.Module:
    if attn_type == "none":
        return make_attn(in_channels, attn_type="none")
    return make_time_attn(in_channels, attn_type=attn_type, **kwargs)


def _kernel(size: int | Iterable[int]) -> int | tuple[int, ...]:
    if isinstance(size, int):
        return size
    return tuple(int(k) for k in size)


def _frames(module: nn.Module, timesteps: int | None) -> int:
    timesteps = timesteps if timesteps is not None else getattr(module, "timesteps", None)
    if timesteps is None:
        raise ValueError(f"{type(module).__name__} needs timesteps (the number of frames per clip)")
    return int(timesteps)
