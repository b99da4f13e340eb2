"""The encoder / middle / decoder layout every UNet here shares, built and run in one place.

A network's constructor calls ``self._configure(locals())``: its arguments become
attributes of the same name, the skeleton normalises the ones it reads, then builds
``time_embed``, ``label_emb``, ``input_blocks.N.M``, ``middle_block.K``,
``output_blocks.N.M`` and ``out`` (the state-dict keys of the released checkpoints).
Networks choose their blocks through four hooks: ``_make_res_block``,
``_make_attention``, ``_make_downsample`` and ``_make_upsample``; the defaults are the
image UNet's blocks. ``_forward`` embeds the timesteps and the class/vector input ``y``
and walks the tree; extra keyword arguments (frame counts, view conditioning, ...) reach
the blocks that take them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...errors import ConfigError, InputError
from .. import token_merging
from ..attention import SpatialTransformer
from ..layers import conv_nd, linear, normalization, timestep_embedding, zero_module
from . import deepcache
from ._unet_blocks import (
    AttentionBlock,
    Downsample,
    ResBlock,
    Timestep,
    TimestepEmbedSequential,
    Upsample,
    call_layer,
)


def _per_level(value, levels: int, name: str) -> list[int]:
    if isinstance(value, int):
        return [value] * levels
    value = [int(v) for v in value]
    if len(value) != levels:
        raise ConfigError(f"{name}={value} needs one entry per level of channel_mult ({levels})")
    return value


def _mlp(dim_in: int, dim: int) -> nn.Sequential:
    return nn.Sequential(linear(dim_in, dim), nn.SiLU(), linear(dim, dim))


class UNetSkeleton(nn.Module):
    """Timestep-conditioned UNet layout; the blocks come from the hooks.

    Class attributes are the settings of networks whose constructor does not take them.
    """

    num_attention_blocks: list[int] | None = None
    disable_self_attentions: list[bool] | None = None
    disable_middle_self_attn: bool = False
    disable_middle_transformer: bool = False
    time_downup: bool = False  # 3-D resampling also halves/doubles the time axis

    def _configure(self, arguments: dict[str, Any]) -> None:
        """Keep a constructor's arguments as attributes, check them, build the tree."""
        for name, value in arguments.items():
            if name not in ("self", "__class__"):
                setattr(self, name, value)
        self._normalise_settings()
        self.time_embed = _mlp(self.model_channels, self.time_embed_dim)
        if self.num_classes is not None:
            self.label_emb = self._make_label_emb()
        skip_channels = self._build_input_blocks()
        self._build_middle_block()
        ch = self._build_output_blocks(skip_channels)
        self.out = nn.Sequential(
            normalization(ch),
            nn.SiLU(),
            zero_module(conv_nd(self.dims, self.model_channels, self.out_channels, 3, padding=1)),
        )

    def _normalise_settings(self) -> None:
        if self.num_heads == -1 and self.num_head_channels == -1:
            raise ConfigError("set either num_heads or num_head_channels")
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        levels = len(self.channel_mult)
        self.num_res_blocks = _per_level(self.num_res_blocks, levels, "num_res_blocks")
        self.attention_resolutions = tuple(int(r) for r in self.attention_resolutions)
        self.transformer_depth = _per_level(self.transformer_depth, levels, "transformer_depth")
        if self.transformer_depth_middle is None:
            self.transformer_depth_middle = self.transformer_depth[-1]
        self.transformer_depth_middle = int(self.transformer_depth_middle)
        if self.num_heads_upsample == -1:
            self.num_heads_upsample = self.num_heads
        if self.context_dim is not None and not isinstance(self.context_dim, int):
            self.context_dim = [int(d) for d in self.context_dim]
        if self.disable_self_attentions is not None:
            self.disable_self_attentions = [bool(d) for d in self.disable_self_attentions]
        if self.num_attention_blocks is not None:
            self._check_num_attention_blocks()
        self.time_embed_dim = 4 * self.model_channels

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

    # ------------------------------------------------------------------ block hooks

    def _make_label_emb(self) -> nn.Module:
        """The embedding of ``y`` for ``num_classes`` (int, continuous, timestep, sequential)."""
        ted = self.time_embed_dim
        if isinstance(self.num_classes, int):
            return nn.Embedding(self.num_classes, ted)
        if self.num_classes == "continuous":
            return nn.Linear(1, ted)
        if self.num_classes == "timestep":
            return nn.Sequential(Timestep(self.model_channels), _mlp(self.model_channels, ted))
        if self.num_classes == "sequential":
            if self.adm_in_channels is None:
                raise ConfigError("num_classes='sequential' needs adm_in_channels")
            return nn.Sequential(_mlp(self.adm_in_channels, ted))
        raise ConfigError(
            f"num_classes={self.num_classes!r}: expected an int, 'continuous', "
            "'timestep' or 'sequential'"
        )

    def _heads(self, ch: int) -> tuple[int, int]:
        """(num_heads, dim_head) at width ``ch``."""
        if self.num_head_channels == -1:
            return self.num_heads, ch // self.num_heads
        return ch // self.num_head_channels, self.num_head_channels

    def _make_res_block(self, ch: int, out_ch: int, **kwargs) -> nn.Module:
        """A residual block ``ch -> out_ch``; ``down=True``/``up=True`` resample inside it."""
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

    def _make_attention(
        self, ch: int, depth: int, disable_self_attn: bool, upsampling: bool = False
    ) -> nn.Module:
        """An attention layer at width ``ch`` (``depth`` transformer blocks)."""
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
        return Downsample(
            ch, self.conv_resample, dims=self.dims, out_channels=out_ch, third_down=self.time_downup
        )

    def _make_upsample(self, ch: int, out_ch: int) -> nn.Module:
        if self.resblock_updown:
            return self._make_res_block(ch, out_ch, up=True)
        return Upsample(
            ch, self.conv_resample, dims=self.dims, out_channels=out_ch, third_up=self.time_downup
        )

    # ------------------------------------------------------------------ tree building

    def _attention_here(self, ds: int, level: int, index: int) -> bool:
        if ds not in self.attention_resolutions:
            return False
        nab = self.num_attention_blocks
        return nab is None or index < nab[level]

    def _self_attn_disabled(self, level: int) -> bool:
        if self.disable_self_attentions is None:
            return False
        return self.disable_self_attentions[level]

    def _res_and_attention(
        self, ch: int, out_ch: int, ds: int, level: int, index: int, upsampling: bool = False
    ) -> list[nn.Module]:
        """A res block to ``out_ch``, then attention where ``level`` and ``ds`` have it."""
        layers = [self._make_res_block(ch, out_ch)]
        if self._attention_here(ds, level, index):
            depth, no_self_attn = self.transformer_depth[level], self._self_attn_disabled(level)
            layers.append(self._make_attention(out_ch, depth, no_self_attn, upsampling))
        return layers

    def _build_input_blocks(self) -> list[int]:
        """Input convolution, then per level res(+attention) blocks and a downsample."""
        mc = self.model_channels
        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(conv_nd(self.dims, self.in_channels, mc, 3, padding=1))]
        )
        skip_channels, ch, ds = [mc], mc, 1
        for level, mult in enumerate(self.channel_mult):
            for index in range(self.num_res_blocks[level]):
                layers = self._res_and_attention(ch, mult * mc, ds, level, index)
                ch = mult * mc
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(self.channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(self._make_downsample(ch, ch)))
                skip_channels.append(ch)
                ds *= 2
        self._bottom = (ch, ds)
        return skip_channels

    def _build_middle_block(self) -> None:
        """Res block, attention (or nothing), res block; built in that order."""
        ch, _ = self._bottom
        layers = [self._make_res_block(ch, ch)]
        if self.disable_middle_transformer:
            layers.append(nn.Identity())
        else:
            depth = self.transformer_depth_middle
            layers.append(self._make_attention(ch, depth, self.disable_middle_self_attn))
        layers.append(self._make_res_block(ch, ch))
        self.middle_block = TimestepEmbedSequential(*layers)

    def _build_output_blocks(self, skip_channels: list[int]) -> int:
        """Per level (deepest first) res(+attention) blocks over the skip concatenation."""
        mc = self.model_channels
        ch, ds = self._bottom
        del self._bottom
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(self.channel_mult))):
            for index in range(self.num_res_blocks[level] + 1):
                layers = self._res_and_attention(
                    ch + skip_channels.pop(), mc * mult, ds, level, index, upsampling=True
                )
                ch = mc * mult
                if level and index == self.num_res_blocks[level]:
                    layers.append(self._make_upsample(ch, ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        return ch

    def attention_downsamplings(self) -> set[int]:
        """The downsampling factors at which the input blocks hold transformer blocks."""
        levels, ds = set(), 1
        for block in self.input_blocks:
            for layer in block:
                if isinstance(layer, Downsample):
                    ds *= 2
                elif isinstance(layer, SpatialTransformer):
                    levels.add(ds)
        return levels

    # ------------------------------------------------------------------ forward

    def _embedding(
        self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None
    ) -> torch.Tensor:
        """Timestep embedding plus the class/vector embedding of ``y``: (B, 4 * model_channels)."""
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
        return emb

    def _forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        **extras,
    ) -> torch.Tensor:
        """Embed, then run the input blocks, the middle block and the output blocks."""
        emb = self._embedding(x, timesteps, y)
        # TorchDynamo traces the plain network (reading the context variable breaks graphs)
        compiling = torch.compiler.is_compiling()
        merging = None if compiling else token_merging.active()
        if merging is not None:  # merging reads the latents' size
            merging.size = (x.shape[-2], x.shape[-1])
        reuse = None if compiling else deepcache.active()
        if reuse is not None:
            return deepcache.forward(self, reuse, x, emb, context, extras)
        skips = []
        h = x
        for module in self.input_blocks:
            h = module(h, emb, context, **extras)
            skips.append(h)
        h = self.middle_block(h, emb, context, **extras)
        for module in self.output_blocks:
            h = torch.cat([h, skips.pop()], dim=1)
            # Layer by layer, so that the concatenation (an argument of the block's
            # first layer only) is freed before the block's transformer runs.
            for layer in module:
                h = call_layer(layer, h, emb, context, **extras)
        return self.out(h.type(x.dtype))
