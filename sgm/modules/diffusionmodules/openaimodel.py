"""The image UNet (Dhariwal & Nichol, 2021; Rombach et al., 2022) used by SD 2.x and SDXL.

The layout (and so the state-dict keys ``input_blocks.N.M``, ``middle_block.K``,
``output_blocks.N.M``) and the forward loop live in ``_unet_skeleton``, shared with the
video UNets, which change block types through its hooks (``_make_res_block``,
``_make_attention``, ``_make_downsample``, ``_make_upsample``). Blocks live in
``_unet_blocks``; they are re-exported here under their public names.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..attention import SpatialTransformer
from ..layers import conv_nd, linear, normalization, timestep_embedding, zero_module
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
from ._unet_skeleton import UNetSkeleton

__all__ = [
    "AttentionBlock",
    "AttentionPool2d",
    "Downsample",
    "QKVAttention",
    "QKVAttentionLegacy",
    "ResBlock",
    "SpatialTransformer",
    "Timestep",
    "TimestepBlock",
    "TimestepEmbedSequential",
    "UNetModel",
    "Upsample",
    "call_layer",
    "conv_nd",
    "linear",
    "normalization",
    "timestep_embedding",
    "zero_module",
]


class UNetModel(UNetSkeleton):
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
        self._configure(locals())

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """(B, in_channels, H, W), timesteps (B,), context (B, M, D), y -> (B, out, H, W)."""
        return self._forward(x, timesteps, context, y)
