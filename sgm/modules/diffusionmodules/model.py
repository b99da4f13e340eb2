"""Convolutional VAE encoder/decoder (the SD/SDXL/SVD first stage) and the DDPM UNet.

``ddconfig`` keys: ``double_z, z_channels, resolution, in_channels, out_ch, ch,
ch_mult, num_res_blocks, attn_resolutions, dropout, attn_type``. The spatial
down-sampling factor is ``2 ** (len(ch_mult) - 1)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ._vae_blocks import (
    ATTN_TYPES,
    AttnBlock,
    Downsample,
    IdentityAttn,
    LinAttnBlock,
    MemoryEfficientAttnBlock,
    MemoryEfficientCrossAttentionWrapper,
    Normalize,
    ResnetBlock,
    Upsample,
    get_timestep_embedding,
    make_attn,
    nonlinearity,
)
from ._vae_levels import down_levels, init_sizes, mid_block, up_levels

__all__ = [
    "ATTN_TYPES",
    "AttnBlock",
    "Decoder",
    "Downsample",
    "Encoder",
    "IdentityAttn",
    "LinAttnBlock",
    "MemoryEfficientAttnBlock",
    "MemoryEfficientCrossAttentionWrapper",
    "Model",
    "Normalize",
    "ResnetBlock",
    "Upsample",
    "get_timestep_embedding",
    "make_attn",
    "nonlinearity",
]


class Encoder(nn.Module):
    """VAE encoder: image (B, in_channels, H, W) -> moments (B, 2*z_channels, H/f, W/f)."""

    def __init__(
        self,
        *,
        ch: int,
        out_ch: int,
        ch_mult: Sequence[int] = (1, 2, 4, 8),
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        dropout: float = 0.0,
        resamp_with_conv: bool = True,
        in_channels: int,
        resolution: int,
        z_channels: int,
        double_z: bool = True,
        use_linear_attn: bool = False,
        attn_type: str = "vanilla",
        **ignore_kwargs: Any,
    ):
        super().__init__()
        ch_mult, attn_resolutions, attn_type = init_sizes(
            self,
            ch,
            0,
            ch_mult,
            num_res_blocks,
            attn_resolutions,
            resolution,
            in_channels,
            use_linear_attn,
            attn_type,
        )
        self.in_ch_mult = (1, *ch_mult)
        self.conv_in = nn.Conv2d(in_channels, ch, kernel_size=3, stride=1, padding=1)
        self.down, block_in, _ = down_levels(
            ch,
            ch_mult,
            num_res_blocks,
            attn_resolutions,
            dropout,
            resamp_with_conv,
            resolution,
            self.temb_ch,
            attn_type,
        )
        self.mid = mid_block(block_in, self.temb_ch, dropout, attn_type)
        self.norm_out = Normalize(block_in)
        out = 2 * z_channels if double_z else z_channels
        self.conv_out = nn.Conv2d(block_in, out, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for i_level, level in enumerate(self.down):
            for i_block, block in enumerate(level.block):
                h = block(h, None)
                if len(level.attn) > 0:
                    h = level.attn[i_block](h)
            if i_level != self.num_resolutions - 1:
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h, None)), None)
        return self.conv_out(nonlinearity(self.norm_out(h)))


class Decoder(nn.Module):
    """VAE decoder: latent (B, z_channels, h, w) -> image (B, out_ch, h*f, w*f).

    Subclasses change the layers through ``_make_attn``, ``_make_resblock`` and
    ``_make_conv`` (each returns a constructor); keyword arguments of ``forward``
    (e.g. ``timesteps``) reach every block.
    """

    def __init__(
        self,
        *,
        ch: int,
        out_ch: int,
        ch_mult: Sequence[int] = (1, 2, 4, 8),
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        dropout: float = 0.0,
        resamp_with_conv: bool = True,
        in_channels: int,
        resolution: int,
        z_channels: int,
        give_pre_end: bool = False,
        tanh_out: bool = False,
        use_linear_attn: bool = False,
        attn_type: str = "vanilla",
        **ignorekwargs: Any,
    ):
        super().__init__()
        ch_mult, attn_resolutions, attn_type = init_sizes(
            self,
            ch,
            0,
            ch_mult,
            num_res_blocks,
            attn_resolutions,
            resolution,
            in_channels,
            use_linear_attn,
            attn_type,
        )
        self.give_pre_end = give_pre_end
        self.tanh_out = tanh_out
        block_in = ch * ch_mult[-1]
        curr_res = resolution // 2 ** (self.num_resolutions - 1)
        self.z_shape = (1, z_channels, curr_res, curr_res)
        make_attn_cls = self._make_attn()
        make_resblock_cls = self._make_resblock()
        make_conv_cls = self._make_conv()
        self.conv_in = nn.Conv2d(z_channels, block_in, kernel_size=3, stride=1, padding=1)
        self.mid = mid_block(
            block_in, self.temb_ch, dropout, attn_type, make_resblock_cls, make_attn_cls
        )
        self.up, block_in = up_levels(
            ch,
            ch_mult,
            num_res_blocks,
            attn_resolutions,
            dropout,
            resamp_with_conv,
            block_in,
            curr_res,
            self.temb_ch,
            attn_type,
            make_resblock_cls,
            make_attn_cls,
        )
        self.norm_out = Normalize(block_in)
        self.conv_out = make_conv_cls(block_in, out_ch, kernel_size=3, stride=1, padding=1)

    def _make_attn(self) -> Callable[..., nn.Module]:
        return make_attn

    def _make_resblock(self) -> Callable[..., nn.Module]:
        return ResnetBlock

    def _make_conv(self) -> Callable[..., nn.Module]:
        return nn.Conv2d

    def get_last_layer(self, **kwargs: Any) -> torch.Tensor:
        """Weight of the output convolution (for the adaptive GAN weight)."""
        return self.conv_out.weight

    def forward(self, z: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        self.last_z_shape = z.shape
        h = self.conv_in(z)
        h = self.mid.block_1(h, None, **kwargs)
        h = self.mid.attn_1(h, **kwargs)
        h = self.mid.block_2(h, None, **kwargs)
        for i_level in reversed(range(self.num_resolutions)):
            level = self.up[i_level]
            for i_block, block in enumerate(level.block):
                # h is this loop's own: a plain resnet block may reuse its storage
                hand_over = {"consume_input": True} if type(block) is ResnetBlock else {}
                h = block(h, None, **hand_over, **kwargs)
                if len(level.attn) > 0:
                    h = level.attn[i_block](h, **kwargs)
            if i_level != 0:
                h = level.upsample(h)
        if self.give_pre_end:
            return h
        h = self.conv_out(nonlinearity(self.norm_out(h)), **kwargs)
        return torch.tanh(h) if self.tanh_out else h


class Model(nn.Module):
    """The DDPM UNet with timestep embedding (Ho et al., 2020), VAE-style blocks."""

    def __init__(
        self,
        *,
        ch: int,
        out_ch: int,
        ch_mult: Sequence[int] = (1, 2, 4, 8),
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        dropout: float = 0.0,
        resamp_with_conv: bool = True,
        in_channels: int,
        resolution: int,
        use_timestep: bool = True,
        use_linear_attn: bool = False,
        attn_type: str = "vanilla",
    ):
        super().__init__()
        ch_mult, attn_resolutions, attn_type = init_sizes(
            self,
            ch,
            ch * 4,
            ch_mult,
            num_res_blocks,
            attn_resolutions,
            resolution,
            in_channels,
            use_linear_attn,
            attn_type,
        )
        self.use_timestep = use_timestep
        if use_timestep:
            self.temb = nn.Module()
            self.temb.dense = nn.ModuleList(
                [nn.Linear(ch, self.temb_ch), nn.Linear(self.temb_ch, self.temb_ch)]
            )
        self.conv_in = nn.Conv2d(in_channels, ch, kernel_size=3, stride=1, padding=1)
        self.down, block_in, curr_res = down_levels(
            ch,
            ch_mult,
            num_res_blocks,
            attn_resolutions,
            dropout,
            resamp_with_conv,
            resolution,
            self.temb_ch,
            attn_type,
        )
        self.mid = mid_block(block_in, self.temb_ch, dropout, attn_type)
        self.up, block_in = up_levels(
            ch,
            ch_mult,
            num_res_blocks,
            attn_resolutions,
            dropout,
            resamp_with_conv,
            block_in,
            curr_res,
            self.temb_ch,
            attn_type,
            skip=True,
        )
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, kernel_size=3, stride=1, padding=1)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, C, H, W), t (B,), context concatenated on channels -> (B, out_ch, H, W)."""
        if context is not None:
            x = torch.cat((x, context), dim=1)
        temb = None
        if self.use_timestep:
            if t is None:
                raise ValueError("Model(use_timestep=True) needs timesteps t")
            temb = get_timestep_embedding(t, self.ch)
            temb = self.temb.dense[1](nonlinearity(self.temb.dense[0](temb)))
        hs = [self.conv_in(x)]
        for i_level, level in enumerate(self.down):
            for i_block, block in enumerate(level.block):
                h = block(hs[-1], temb)
                if len(level.attn) > 0:
                    h = level.attn[i_block](h)
                hs.append(h)
            if i_level != self.num_resolutions - 1:
                hs.append(level.downsample(hs[-1]))
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(hs[-1], temb)), temb)
        for i_level in reversed(range(self.num_resolutions)):
            level = self.up[i_level]
            for i_block, block in enumerate(level.block):
                h = block(torch.cat([h, hs.pop()], dim=1), temb)
                if len(level.attn) > 0:
                    h = level.attn[i_block](h)
            if i_level != 0:
                h = level.upsample(h)
        return self.conv_out(nonlinearity(self.norm_out(h)))

    def get_last_layer(self) -> torch.Tensor:
        """Weight of the output convolution."""
        return self.conv_out.weight
