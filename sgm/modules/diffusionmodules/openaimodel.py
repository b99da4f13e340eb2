"""The image UNet (Dhariwal & Nichol, 2021; Rombach et al., 2022) used by SD 2.x and SDXL.

Blocks live in ``_unet_blocks``; they are re-exported here under their public names.
Subclasses change block types by overriding ``_make_res_block``, ``_make_attention``,
``_make_downsample`` and ``_make_upsample``; the module tree (and so the state-dict
keys ``input_blocks.N.M``, ``middle_block.K``, ``output_blocks.N.M``) stays the same.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ...errors import ConfigError, InputError
from ..attention import SpatialTransformer
from ._unet_blocks import (
    AttentionBlock,
    AttentionPool2d,
    Downsample,
    QKVAttention,
    QKVAttentionLegacy,
    ResBlock,
    Timestep,
    TimestepBlock,
    TimestepEmbedSequential,
    Upsample,
    call_layer,
)
from .util import conv_nd, linear, normalization, timestep_embedding, zero_module

__all__ = [
    "AttentionBlock",
    "AttentionPool2d",
    "Downsample",
    "QKVAttention",
    "QKVAttentionLegacy",
    "ResBlock",
    "Timestep",
    "TimestepBlock",
    "TimestepEmbedSequential",
    "UNetModel",
    "Upsample",
]


def _per_level(value, levels: int, name: str) -> list[int]:
    if isinstance(value, int):
        return [value] * levels
    value = [int(v) for v in value]
    if len(value) != levels:
        raise ConfigError(f"{name}={value} needs one entry per level of channel_mult ({levels})")
    return value


class UNetModel(nn.Module):
    """Timestep- and context-conditioned UNet with spatial transformers.

    Args:
        attention_resolutions: downsampling factors (1, 2, 4, ...) that get attention.
        num_res_blocks, transformer_depth: int or one entry per level;
            ``transformer_depth_middle`` defaults to the last level's depth.
        num_classes: int (embedding table), ``"continuous"``, ``"timestep"`` or
            ``"sequential"`` (an MLP on a ``(B, adm_in_channels)`` vector ``y``).
        num_heads / num_head_channels: fix one of them (the other is -1).
        context_dim: cross-attention width, or a list with one entry per block.
        num_attention_blocks: per level, how many res blocks get a transformer.
        use_spatial_transformer: False uses plain ``AttentionBlock`` instead.
        spatial_transformer_attn_type: ``"softmax"`` or ``"softmax-xformers"``.
        legacy: accepted for old configs; head widths are the same either way.
    """

    def __init__(
        self,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int | Sequence[int],
        attention_resolutions: Sequence[int],
        dropout: float = 0.0,
        channel_mult: Sequence[int] = (1, 2, 4, 8),
        conv_resample: bool = True,
        dims: int = 2,
        num_classes: int | str | None = None,
        use_checkpoint: bool = False,
        num_heads: int = -1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
        use_spatial_transformer: bool = True,
        transformer_depth: int | Sequence[int] = 1,
        transformer_depth_middle: int | None = None,
        context_dim: int | Sequence[int] | None = None,
        legacy: bool = True,
        disable_self_attentions: Sequence[bool] | None = None,
        num_attention_blocks: Sequence[int] | None = None,
        disable_middle_self_attn: bool = False,
        disable_middle_transformer: bool = False,
        use_linear_in_transformer: bool = False,
        spatial_transformer_attn_type: str = "softmax",
        adm_in_channels: int | None = None,
    ):
        super().__init__()
        channel_mult = tuple(int(m) for m in channel_mult)
        levels = len(channel_mult)
        if num_heads == -1 and num_head_channels == -1:
            raise ConfigError("set either num_heads or num_head_channels")
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_res_blocks = _per_level(num_res_blocks, levels, "num_res_blocks")
        self.attention_resolutions = tuple(attention_resolutions)
        self.dropout = dropout
        self.channel_mult = channel_mult
        self.conv_resample = conv_resample
        self.dims = dims
        self.num_classes = num_classes
        self.use_checkpoint = use_checkpoint
        self.num_heads = num_heads
        self.num_head_channels = num_head_channels
        self.num_heads_upsample = num_heads if num_heads_upsample == -1 else num_heads_upsample
        self.use_scale_shift_norm = use_scale_shift_norm
        self.resblock_updown = resblock_updown
        self.use_new_attention_order = use_new_attention_order
        self.use_spatial_transformer = use_spatial_transformer
        self.transformer_depth = _per_level(transformer_depth, levels, "transformer_depth")
        self.transformer_depth_middle = (
            self.transformer_depth[-1]
            if transformer_depth_middle is None
            else int(transformer_depth_middle)
        )
        self.context_dim = context_dim
        self.disable_self_attentions = disable_self_attentions
        self.num_attention_blocks = num_attention_blocks
        if self.num_attention_blocks is not None:
            self._check_num_attention_blocks()
        self.use_linear_in_transformer = use_linear_in_transformer
        self.spatial_transformer_attn_type = spatial_transformer_attn_type
        self.time_embed_dim = model_channels * 4

        self.time_embed = nn.Sequential(
            linear(model_channels, self.time_embed_dim),
            nn.SiLU(),
            linear(self.time_embed_dim, self.time_embed_dim),
        )
        if self.num_classes is not None:
            self.label_emb = self._make_label_emb(adm_in_channels)
        chans = self._build_input_blocks()
        self._build_middle_block(disable_middle_self_attn, disable_middle_transformer)
        self._build_output_blocks(chans)
        self.out = nn.Sequential(
            normalization(model_channels),
            nn.SiLU(),
            zero_module(conv_nd(dims, model_channels, out_channels, 3, padding=1)),
        )

    def _check_num_attention_blocks(self) -> None:
        nab = [int(n) for n in self.num_attention_blocks]
        if len(nab) != len(self.num_res_blocks) or any(
            a > r for a, r in zip(nab, self.num_res_blocks)
        ):
            raise ConfigError(
                f"num_attention_blocks={nab} must have one entry per level, each at "
                f"most num_res_blocks={self.num_res_blocks}"
            )
        self.num_attention_blocks = nab

    # ------------------------------------------------------------------ block factories

    def _make_label_emb(self, adm_in_channels: int | None) -> nn.Module:
        ted = self.time_embed_dim
        if isinstance(self.num_classes, int):
            return nn.Embedding(self.num_classes, ted)
        if self.num_classes == "continuous":
            return nn.Linear(1, ted)
        if self.num_classes == "timestep":
            return nn.Sequential(
                Timestep(self.model_channels),
                nn.Sequential(linear(self.model_channels, ted), nn.SiLU(), linear(ted, ted)),
            )
        if self.num_classes == "sequential":
            if adm_in_channels is None:
                raise ConfigError("num_classes='sequential' needs adm_in_channels")
            return nn.Sequential(
                nn.Sequential(linear(adm_in_channels, ted), nn.SiLU(), linear(ted, ted))
            )
        raise ConfigError(
            f"num_classes={self.num_classes!r}: expected an int, 'continuous', "
            "'timestep' or 'sequential'"
        )

    def _make_res_block(self, ch: int, out_ch: int, **kwargs) -> nn.Module:
        return ResBlock(
            ch,
            self.time_embed_dim,
            self.dropout,
            out_channels=out_ch,
            dims=self.dims,
            use_checkpoint=self.use_checkpoint,
            use_scale_shift_norm=self.use_scale_shift_norm,
            **kwargs,
        )

    def _heads(self, ch: int) -> tuple[int, int]:
        if self.num_head_channels == -1:
            return self.num_heads, ch // self.num_heads
        return ch // self.num_head_channels, self.num_head_channels

    def _make_attention(
        self, ch: int, depth: int, disable_self_attn: bool, upsampling: bool = False
    ) -> nn.Module:
        num_heads, dim_head = self._heads(ch)
        if not self.use_spatial_transformer:
            return AttentionBlock(
                ch,
                num_heads=self.num_heads_upsample if upsampling else num_heads,
                num_head_channels=dim_head,
                use_checkpoint=self.use_checkpoint,
                use_new_attention_order=self.use_new_attention_order,
            )
        return SpatialTransformer(
            ch,
            num_heads,
            dim_head,
            depth=depth,
            context_dim=self.context_dim,
            disable_self_attn=disable_self_attn,
            use_linear=self.use_linear_in_transformer,
            attn_type=self.spatial_transformer_attn_type,
            use_checkpoint=self.use_checkpoint,
        )

    def _make_downsample(self, ch: int, out_ch: int) -> nn.Module:
        if self.resblock_updown:
            return self._make_res_block(ch, out_ch, down=True)
        return Downsample(ch, self.conv_resample, dims=self.dims, out_channels=out_ch)

    def _make_upsample(self, ch: int, out_ch: int) -> nn.Module:
        if self.resblock_updown:
            return self._make_res_block(ch, out_ch, up=True)
        return Upsample(ch, self.conv_resample, dims=self.dims, out_channels=out_ch)

    # ------------------------------------------------------------------ tree building

    def _attention_here(self, ds: int, level: int, index: int) -> bool:
        if ds not in self.attention_resolutions:
            return False
        nab = self.num_attention_blocks
        return nab is None or index < nab[level]

    def _self_attn_disabled(self, level: int) -> bool:
        if self.disable_self_attentions is None:
            return False
        return bool(self.disable_self_attentions[level])

    def _res_and_attention(
        self,
        ch: int,
        out_ch: int,
        ds: int,
        level: int,
        index: int,
        upsampling: bool = False,
    ) -> list[nn.Module]:
        """A res block to ``out_ch``, then attention where ``level`` and ``ds`` have it."""
        layers = [self._make_res_block(ch, out_ch)]
        if self._attention_here(ds, level, index):
            layers.append(
                self._make_attention(
                    out_ch,
                    self.transformer_depth[level],
                    self._self_attn_disabled(level),
                    upsampling=upsampling,
                )
            )
        return layers

    def _build_input_blocks(self) -> list[int]:
        mc = self.model_channels
        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(conv_nd(self.dims, self.in_channels, mc, 3, padding=1))]
        )
        chans, ch, ds = [mc], mc, 1
        for level, mult in enumerate(self.channel_mult):
            for nr in range(self.num_res_blocks[level]):
                layers = self._res_and_attention(ch, mult * mc, ds, level, nr)
                ch = mult * mc
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                chans.append(ch)
            if level != len(self.channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(self._make_downsample(ch, ch)))
                chans.append(ch)
                ds *= 2
        self._bottom = (ch, ds)
        return chans

    def _build_middle_block(self, disable_self_attn: bool, disable_transformer: bool):
        ch, _ = self._bottom
        if disable_transformer:
            attention = nn.Identity()
        else:
            attention = self._make_attention(ch, self.transformer_depth_middle, disable_self_attn)
        self.middle_block = TimestepEmbedSequential(
            self._make_res_block(ch, ch), attention, self._make_res_block(ch, ch)
        )

    def _build_output_blocks(self, chans: list[int]) -> None:
        mc = self.model_channels
        ch, ds = self._bottom
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(self.channel_mult))):
            for i in range(self.num_res_blocks[level] + 1):
                layers = self._res_and_attention(
                    ch + chans.pop(), mc * mult, ds, level, i, upsampling=True
                )
                ch = mc * mult
                if level and i == self.num_res_blocks[level]:
                    layers.append(self._make_upsample(ch, ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        del self._bottom

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """(B, in_channels, H, W), timesteps (B,), context (B, M, D), y -> (B, out, H, W)."""
        if (y is not None) != (self.num_classes is not None):
            raise InputError(
                "y (class/vector conditioning) must be given exactly when the model "
                f"has num_classes (num_classes={self.num_classes!r}, y given: "
                f"{y is not None})"
            )
        t_emb = timestep_embedding(timesteps, self.model_channels)
        emb = self.time_embed(t_emb.to(self.time_embed[0].weight.dtype))
        if y is not None:
            if y.shape[0] != x.shape[0]:
                raise InputError(f"y has batch {y.shape[0]}, x has {x.shape[0]}")
            emb = emb + self.label_emb(y.to(emb.dtype) if y.is_floating_point() else y)
        hs = []
        h = x
        for module in self.input_blocks:
            h = module(h, emb, context)
            hs.append(h)
        h = self.middle_block(h, emb, context)
        for module in self.output_blocks:
            h = torch.cat([h, hs.pop()], dim=1)
            # Layer by layer, so that the concatenation (an argument of the block's
            # first layer only) is freed before the block's transformer runs.
            for layer in module:
                h = call_layer(layer, h, emb, context)
        return self.out(h.type(x.dtype))
