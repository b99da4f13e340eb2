"""The encoder/middle/decoder layout shared by the video UNets.

Subclasses supply ``_resblock(ch, out_ch, down=False, up=False)`` and
``_attention(ch, num_heads, dim_head, depth)``; the module tree (and so the
state-dict keys ``input_blocks.N.M``, ``middle_block.K``, ``output_blocks.N.M``) is
the classic UNet one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ...errors import ConfigError
from ._unet_blocks import (
    Downsample,
    Timestep,
    TimestepEmbedSequential,
    Upsample,
    call_layer,
)
from .util import conv_nd, linear, normalization, timestep_embedding, zero_module


def _mlp(dim_in: int, dim: int) -> nn.Sequential:
    return nn.Sequential(linear(dim_in, dim), nn.SiLU(), linear(dim, dim))


def label_embedding(num_classes, model_channels: int, adm_in_channels) -> nn.Module:
    """The class/vector embedding for ``num_classes`` (int, continuous, timestep, sequential)."""
    dim = 4 * model_channels
    if isinstance(num_classes, int):
        return nn.Embedding(num_classes, dim)
    if num_classes == "continuous":
        return nn.Linear(1, dim)
    if num_classes == "timestep":
        return nn.Sequential(Timestep(model_channels), _mlp(model_channels, dim))
    if num_classes == "sequential":
        if adm_in_channels is None:
            raise ConfigError("num_classes 'sequential' needs adm_in_channels")
        return nn.Sequential(_mlp(adm_in_channels, dim))
    raise ConfigError(
        f"unknown num_classes {num_classes!r}; expected an int, 'continuous', "
        "'timestep' or 'sequential'"
    )


class VideoUNetBase(nn.Module):
    """UNet skeleton for (B*T, C, H, W) video latents; blocks come from the subclass."""

    def _init_heads(
        self,
        num_heads: int,
        num_head_channels: int,
        num_heads_upsample: int,
        dropout: float,
        use_checkpoint: bool,
    ) -> None:
        """Head counts and the settings every block shares."""
        if num_heads == -1 and num_head_channels == -1:
            raise ConfigError("set num_heads or num_head_channels")
        self.num_heads, self.num_head_channels = num_heads, num_head_channels
        self.num_heads_upsample = num_heads if num_heads_upsample == -1 else num_heads_upsample
        self.dropout, self.use_checkpoint = dropout, use_checkpoint

    def _heads(self, ch: int) -> tuple[int, int]:
        """(num_heads, dim_head) at width ``ch``."""
        if self.num_head_channels == -1:
            return self.num_heads, ch // self.num_heads
        return ch // self.num_head_channels, self.num_head_channels

    def _build(
        self,
        *,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        channel_mult: Sequence[int],
        conv_resample: bool,
        dims: int,
        num_classes,
        adm_in_channels,
        transformer_depth,
        transformer_depth_middle,
        resblock_updown: bool,
        time_downup: bool,
    ) -> None:
        if not isinstance(num_res_blocks, int):
            raise ConfigError(f"num_res_blocks must be an int, got {num_res_blocks!r}")
        channel_mult = [int(m) for m in channel_mult]
        attention_resolutions = [int(r) for r in attention_resolutions]
        if isinstance(transformer_depth, int):
            transformer_depth = [transformer_depth] * len(channel_mult)
        transformer_depth = [int(d) for d in transformer_depth]
        if transformer_depth_middle is None:
            transformer_depth_middle = transformer_depth[-1]
        self.in_channels, self.model_channels = in_channels, model_channels
        self.out_channels, self.num_res_blocks = out_channels, num_res_blocks
        self.attention_resolutions, self.channel_mult = attention_resolutions, channel_mult
        self.conv_resample, self.num_classes = conv_resample, num_classes
        self.time_embed = _mlp(model_channels, 4 * model_channels)
        if num_classes is not None:
            self.label_emb = label_embedding(num_classes, model_channels, adm_in_channels)
        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(conv_nd(dims, in_channels, model_channels, 3, padding=1))]
        )
        skip_chans = [model_channels]
        ch, ds = model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [self._resblock(ch, mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(self._attention(ch, *self._heads(ch), transformer_depth[level]))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_chans.append(ch)
            if level != len(channel_mult) - 1:
                ds *= 2
                down = (
                    self._resblock(ch, ch, down=True)
                    if resblock_updown
                    else Downsample(
                        ch, conv_resample, dims=dims, out_channels=ch, third_down=time_downup
                    )
                )
                self.input_blocks.append(TimestepEmbedSequential(down))
                skip_chans.append(ch)
        self.middle_block = TimestepEmbedSequential(
            self._resblock(ch, None),
            self._attention(ch, *self._heads(ch), transformer_depth_middle),
            self._resblock(ch, None),
        )
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers = [self._resblock(ch + skip_chans.pop(), model_channels * mult)]
                ch = model_channels * mult
                if ds in attention_resolutions:
                    layers.append(self._attention(ch, *self._heads(ch), transformer_depth[level]))
                if level and i == num_res_blocks:
                    ds //= 2
                    layers.append(
                        self._resblock(ch, ch, up=True)
                        if resblock_updown
                        else Upsample(
                            ch, conv_resample, dims=dims, out_channels=ch, third_up=time_downup
                        )
                    )
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(
            normalization(ch),
            nn.SiLU(),
            zero_module(conv_nd(dims, model_channels, out_channels, 3, padding=1)),
        )

    def _embedding(self, x, timesteps, y) -> torch.Tensor:
        if (y is not None) != (self.num_classes is not None):
            raise ValueError("pass y exactly when the model is class-conditional")
        emb = self.time_embed(
            timestep_embedding(timesteps, self.model_channels).to(self.time_embed[0].weight.dtype)
        )
        if self.num_classes is not None:
            if y.shape[0] != x.shape[0]:
                raise ValueError(f"y has batch {y.shape[0]}, x has {x.shape[0]}")
            emb = emb + self.label_emb(y.to(emb.dtype) if y.is_floating_point() else y)
        return emb

    def _run(self, x, emb, **kwargs) -> torch.Tensor:
        skips = []
        h = x
        for module in self.input_blocks:
            h = module(h, emb, **kwargs)
            skips.append(h)
        h = self.middle_block(h, emb, **kwargs)
        for module in self.output_blocks:
            h = torch.cat([h, skips.pop()], dim=1)
            # Layer by layer, so that the concatenation (an argument of the block's
            # first layer only) is freed before the block's transformer runs.
            for layer in module:
                h = call_layer(layer, h, emb, **kwargs)
        return self.out(h.type(x.dtype))
