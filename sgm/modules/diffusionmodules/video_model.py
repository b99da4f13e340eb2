"""Video UNets: ``VideoUNet`` (SVD, SV3D) and ``SpatialUNetModelWithTime`` (SV4D).

Both take frames flattened into the batch, ``x`` of shape ``(B*T, C, H, W)``, with
``num_video_frames=T``. They are the UNet skeleton of ``_unet_skeleton`` with temporal
residual blocks and attention layers (``_make_res_block`` / ``_make_attention``); the
blocks live in ``_video_blocks``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ...errors import ConfigError
from ..blending import AlphaBlender, get_alpha
from ..spacetime_attention import (
    BasicTransformerTimeMixBlock,
    PostHocSpatialTransformerWithTimeMixing,
    PostHocSpatialTransformerWithTimeMixingAndMotion,
)
from ..video_attention import SpatialVideoTransformer
from ._unet_blocks import ResBlock
from ._unet_skeleton import UNetSkeleton
from ._video_blocks import (
    PostHocAttentionBlockWithTimeMixing,
    PostHocResBlockWithTime,
    VideoResBlock,
    plain_kernel,
)

__all__ = [
    "AlphaBlender",
    "BasicTransformerTimeMixBlock",
    "PostHocAttentionBlockWithTimeMixing",
    "PostHocResBlockWithTime",
    "PostHocSpatialTransformerWithTimeMixing",
    "PostHocSpatialTransformerWithTimeMixingAndMotion",
    "ResBlock",
    "SpatialUNetModelWithTime",
    "SpatialVideoTransformer",
    "VideoResBlock",
    "VideoUNet",
    "get_alpha",
]


def _time_attention_kwargs(
    net: UNetSkeleton, merge_strategy: str, merge_factor: float, disable_self_attn: bool
) -> dict:
    """Settings every spatial-plus-temporal transformer of a video UNet shares."""
    return dict(
        context_dim=net.context_dim,
        time_context_dim=net.time_context_dim,
        dropout=net.dropout,
        ff_in=net.extra_ff_mix_layer,
        use_spatial_context=net.use_spatial_context,
        merge_strategy=merge_strategy,
        merge_factor=merge_factor,
        checkpoint=net.use_checkpoint,
        use_linear=net.use_linear_in_transformer,
        attn_mode=net.spatial_transformer_attn_type,
        disable_self_attn=disable_self_attn,
        disable_temporal_crossattention=net.disable_temporal_crossattention,
        max_time_embed_period=net.max_ddpm_temb_period,
    )


class VideoUNet(UNetSkeleton):
    """UNet with temporal ResBlocks and temporal attention (Blattmann et al., 2023).

    Args:
        merge_strategy / merge_factor: how spatial and temporal paths are blended
            ('fixed', 'learned', 'learned_with_images').
        video_kernel_size: kernel of the temporal 3-D convolutions, e.g. ``[3, 1, 1]``.
        use_spatial_context: temporal cross-attention uses the first frame's context.
        extra_ff_mix_layer: temporal blocks get an input MLP (``ff_in``).
        max_ddpm_temb_period: max period of the frame-index embeddings.
    """

    def __init__(
        self,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
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
        transformer_depth: int | Sequence[int] = 1,
        transformer_depth_middle: int | None = None,
        context_dim: int | None = None,
        time_downup: bool = False,
        time_context_dim: int | None = None,
        extra_ff_mix_layer: bool = False,
        use_spatial_context: bool = False,
        merge_strategy: str = "fixed",
        merge_factor: float = 0.5,
        spatial_transformer_attn_type: str = "softmax",
        video_kernel_size: int | Sequence[int] = 3,
        use_linear_in_transformer: bool = False,
        adm_in_channels: int | None = None,
        disable_temporal_crossattention: bool = False,
        max_ddpm_temb_period: int = 10000,
    ):
        super().__init__()
        if context_dim is None:
            raise ConfigError("VideoUNet needs context_dim")
        self._configure(locals())

    def _make_res_block(self, ch: int, out_ch: int, **kwargs) -> VideoResBlock:
        return VideoResBlock(
            channels=ch,
            emb_channels=self.time_embed_dim,
            dropout=self.dropout,
            video_kernel_size=plain_kernel(self.video_kernel_size),
            merge_strategy=self.merge_strategy,
            merge_factor=self.merge_factor,
            out_channels=out_ch,
            dims=self.dims,
            use_checkpoint=self.use_checkpoint,
            use_scale_shift_norm=self.use_scale_shift_norm,
            **kwargs,
        )

    def _make_attention(
        self, ch: int, depth: int, disable_self_attn: bool, upsampling: bool = False
    ) -> SpatialVideoTransformer:
        kw = _time_attention_kwargs(self, self.merge_strategy, self.merge_factor, disable_self_attn)
        return SpatialVideoTransformer(ch, *self._heads(ch), depth=depth, **kw)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        time_context: torch.Tensor | None = None,
        num_video_frames: int | None = None,
        image_only_indicator: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B*T, C, H, W), timesteps (B*T,), context (B*T, M, D), y (B*T, adm) -> (B*T, C_out, H, W)."""
        return self._forward(
            x,
            timesteps,
            context,
            y,
            time_context=time_context,
            num_video_frames=num_video_frames,
            image_only_indicator=image_only_indicator,
        )


class SpatialUNetModelWithTime(UNetSkeleton):
    """UNet with frame (and, with ``use_motion_attention``, view) mixing for SV4D.

    Args:
        use_spatial_transformer: attention layers are transformers with cross-attention
            (else pixel self-attention blocks with time mixing).
        use_motion_attention: SV4D layers (view + motion attention).
        use_camera_emb / use_3d_attention / separate_motion_merge_factor: SV4D 2.0
            options of :class:`PostHocSpatialTransformerWithTimeMixingAndMotion`.
        use_temporal_resblock: residual blocks carry a temporal 3-D branch.
        time_mix_legacy: blocks hold ``mix_factor`` themselves instead of a ``time_mixer``.
        legacy: head width rule of older checkpoints.
    """

    def __init__(
        self,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
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
        use_spatial_transformer: bool = False,
        transformer_depth: int | Sequence[int] = 1,
        transformer_depth_middle: int | None = None,
        context_dim: int | None = None,
        time_downup: bool = False,
        time_context_dim: int | None = None,
        view_context_dim: int | None = None,
        motion_context_dim: int | None = None,
        extra_ff_mix_layer: bool = False,
        use_spatial_context: bool = False,
        time_block_merge_strategy: str = "fixed",
        time_block_merge_factor: float = 0.5,
        view_block_merge_factor: float = 0.5,
        motion_block_merge_factor: float = 0.5,
        spatial_transformer_attn_type: str = "softmax",
        time_kernel_size: int | Sequence[int] = 3,
        use_linear_in_transformer: bool = False,
        legacy: bool = True,
        adm_in_channels: int | None = None,
        use_temporal_resblock: bool = True,
        disable_temporal_crossattention: bool = False,
        time_mix_legacy: bool = True,
        max_ddpm_temb_period: int = 10000,
        replicate_time_mix_bug: bool = False,
        use_motion_attention: bool = False,
        use_camera_emb: bool = False,
        use_3d_attention: bool = False,
        separate_motion_merge_factor: bool = False,
    ):
        super().__init__()
        if use_spatial_transformer != (context_dim is not None):
            raise ConfigError(
                "context_dim must be set exactly when use_spatial_transformer is True"
            )
        self.use_temporal_resblocks = use_temporal_resblock
        self._configure(locals())

    def _heads(self, ch: int) -> tuple[int, int]:
        num_heads, dim_head = super()._heads(ch)
        if self.legacy:
            dim_head = ch // num_heads if self.use_spatial_transformer else self.num_head_channels
        return num_heads, dim_head

    def _make_res_block(self, ch: int, out_ch: int, **kwargs) -> nn.Module:
        if not self.use_temporal_resblock:
            return super()._make_res_block(ch, out_ch, **kwargs)
        return PostHocResBlockWithTime(
            channels=ch,
            emb_channels=self.time_embed_dim,
            dropout=self.dropout,
            time_kernel_size=plain_kernel(self.time_kernel_size),
            merge_strategy=self.time_block_merge_strategy,
            merge_factor=self.time_block_merge_factor,
            out_channels=out_ch,
            dims=self.dims,
            use_checkpoint=self.use_checkpoint,
            use_scale_shift_norm=self.use_scale_shift_norm,
            time_mix_legacy=self.time_mix_legacy,
            replicate_bug=self.replicate_time_mix_bug,
            **kwargs,
        )

    def _make_attention(
        self, ch: int, depth: int, disable_self_attn: bool, upsampling: bool = False
    ) -> nn.Module:
        num_heads, dim_head = self._heads(ch)
        if not self.use_spatial_transformer:
            return PostHocAttentionBlockWithTimeMixing(
                ch,
                num_heads,
                dim_head,
                use_checkpoint=self.use_checkpoint,
                use_new_attention_order=self.use_new_attention_order,
                dropout=self.dropout,
                ff_in=self.extra_ff_mix_layer,
                use_spatial_context=self.use_spatial_context,
                merge_strategy=self.time_block_merge_strategy,
                merge_factor=self.time_block_merge_factor,
                attn_mode=self.spatial_transformer_attn_type,
                disable_temporal_crossattention=self.disable_temporal_crossattention,
            )
        kw = _time_attention_kwargs(
            self, self.time_block_merge_strategy, self.time_block_merge_factor, disable_self_attn
        )
        kw["time_mix_legacy"] = self.time_mix_legacy
        if not self.use_motion_attention:
            return PostHocSpatialTransformerWithTimeMixing(
                ch, num_heads, dim_head, depth=depth, **kw
            )
        return PostHocSpatialTransformerWithTimeMixingAndMotion(
            ch,
            num_heads,
            dim_head,
            depth=depth,
            motion_context_dim=self.motion_context_dim,
            use_camera_emb=self.use_camera_emb,
            use_3d_attention=self.use_3d_attention,
            separate_motion_merge_factor=self.separate_motion_merge_factor,
            adm_in_channels=self.adm_in_channels,
            merge_factor_motion=self.motion_block_merge_factor,
            **kw,
        )

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        cam: torch.Tensor | None = None,
        time_context: torch.Tensor | None = None,
        num_video_frames: int | None = None,
        image_only_indicator: torch.Tensor | None = None,
        cond_view: torch.Tensor | None = None,
        cond_motion: torch.Tensor | None = None,
        time_step: int | None = None,
    ) -> torch.Tensor:
        """x (B*T*V, C, H, W), context (B, T, D), cond_view (B*V, 4, h, w) -> like x."""
        return self._forward(
            x,
            timesteps,
            context,
            y,
            time_context=time_context,
            num_video_frames=num_video_frames,
            image_only_indicator=image_only_indicator,
            cond_view=cond_view,
            cond_motion=cond_motion,
        )
