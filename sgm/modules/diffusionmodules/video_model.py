"""Video UNets: ``VideoUNet`` (SVD, SV3D) and ``SpatialUNetModelWithTime`` (SV4D).

Both take frames flattened into the batch, ``x`` of shape ``(B*T, C, H, W)``, with
``num_video_frames=T``; the blocks live in ``_video_blocks``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...errors import ConfigError
from ..spacetime_attention import (
    BasicTransformerTimeMixBlock,
    PostHocSpatialTransformerWithTimeMixing,
    PostHocSpatialTransformerWithTimeMixingAndMotion,
)
from ..video_attention import SpatialVideoTransformer
from ._unet_blocks import ResBlock
from ._video_blocks import (
    PostHocAttentionBlockWithTimeMixing,
    PostHocResBlockWithTime,
    VideoResBlock,
    plain_kernel,
)
from ._video_mixing import get_alpha
from ._video_unet_base import VideoUNetBase
from .util import AlphaBlender

__all__ = [
    "AlphaBlender",
    "BasicTransformerTimeMixBlock",
    "PostHocAttentionBlockWithTimeMixing",
    "PostHocResBlockWithTime",
    "PostHocSpatialTransformerWithTimeMixing",
    "PostHocSpatialTransformerWithTimeMixingAndMotion",
    "SpatialUNetModelWithTime",
    "SpatialVideoTransformer",
    "VideoResBlock",
    "VideoUNet",
    "get_alpha",
]


class VideoUNet(VideoUNetBase):
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
        self._init_heads(num_heads, num_head_channels, num_heads_upsample, dropout, use_checkpoint)
        self._dims, self._scale_shift = dims, use_scale_shift_norm
        self._merge = dict(merge_strategy=merge_strategy, merge_factor=merge_factor)
        self._kernel = plain_kernel(video_kernel_size)
        self._attn_kw = dict(
            context_dim=context_dim,
            time_context_dim=time_context_dim,
            dropout=dropout,
            ff_in=extra_ff_mix_layer,
            use_spatial_context=use_spatial_context,
            merge_strategy=merge_strategy,
            merge_factor=merge_factor,
            checkpoint=use_checkpoint,
            use_linear=use_linear_in_transformer,
            attn_mode=spatial_transformer_attn_type,
            disable_self_attn=False,
            disable_temporal_crossattention=disable_temporal_crossattention,
            max_time_embed_period=max_ddpm_temb_period,
        )
        self._build(
            in_channels=in_channels,
            model_channels=model_channels,
            out_channels=out_channels,
            num_res_blocks=num_res_blocks,
            attention_resolutions=attention_resolutions,
            channel_mult=channel_mult,
            conv_resample=conv_resample,
            dims=dims,
            num_classes=num_classes,
            adm_in_channels=adm_in_channels,
            transformer_depth=transformer_depth,
            transformer_depth_middle=transformer_depth_middle,
            resblock_updown=resblock_updown,
            time_downup=time_downup,
        )

    def _resblock(self, ch, out_ch, down=False, up=False):
        return VideoResBlock(
            channels=ch,
            emb_channels=4 * self.model_channels,
            dropout=self.dropout,
            video_kernel_size=self._kernel,
            out_channels=out_ch,
            dims=self._dims,
            use_checkpoint=self.use_checkpoint,
            use_scale_shift_norm=self._scale_shift,
            down=down,
            up=up,
            **self._merge,
        )

    def _attention(self, ch, num_heads, dim_head, depth):
        return SpatialVideoTransformer(ch, num_heads, dim_head, depth=depth, **self._attn_kw)

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
        emb = self._embedding(x, timesteps, y)
        return self._run(
            x,
            emb,
            context=context,
            image_only_indicator=image_only_indicator,
            time_context=time_context,
            num_video_frames=num_video_frames,
        )


class SpatialUNetModelWithTime(VideoUNetBase):
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
        self._init_heads(num_heads, num_head_channels, num_heads_upsample, dropout, use_checkpoint)
        self.use_temporal_resblocks = use_temporal_resblock
        self._legacy, self._spatial_tf = legacy, use_spatial_transformer
        self._motion = use_motion_attention
        self._new_order = use_new_attention_order
        self._res_kw = dict(
            dims=dims, use_checkpoint=use_checkpoint, use_scale_shift_norm=use_scale_shift_norm
        )
        self._time_res_kw = dict(
            merge_factor=time_block_merge_factor,
            merge_strategy=time_block_merge_strategy,
            time_kernel_size=plain_kernel(time_kernel_size),
            time_mix_legacy=time_mix_legacy,
            replicate_bug=replicate_time_mix_bug,
        )
        self._attn_kw = dict(
            context_dim=context_dim,
            time_context_dim=time_context_dim,
            dropout=dropout,
            ff_in=extra_ff_mix_layer,
            use_spatial_context=use_spatial_context,
            merge_strategy=time_block_merge_strategy,
            merge_factor=time_block_merge_factor,
            checkpoint=use_checkpoint,
            use_linear=use_linear_in_transformer,
            attn_mode=spatial_transformer_attn_type,
            disable_self_attn=False,
            disable_temporal_crossattention=disable_temporal_crossattention,
            time_mix_legacy=time_mix_legacy,
            max_time_embed_period=max_ddpm_temb_period,
        )
        self._motion_kw = dict(
            motion_context_dim=motion_context_dim,
            use_camera_emb=use_camera_emb,
            use_3d_attention=use_3d_attention,
            separate_motion_merge_factor=separate_motion_merge_factor,
            adm_in_channels=adm_in_channels,
            merge_factor_motion=motion_block_merge_factor,
        )
        self._build(
            in_channels=in_channels,
            model_channels=model_channels,
            out_channels=out_channels,
            num_res_blocks=num_res_blocks,
            attention_resolutions=attention_resolutions,
            channel_mult=channel_mult,
            conv_resample=conv_resample,
            dims=dims,
            num_classes=num_classes,
            adm_in_channels=adm_in_channels,
            transformer_depth=transformer_depth,
            transformer_depth_middle=transformer_depth_middle,
            resblock_updown=resblock_updown,
            time_downup=time_downup,
        )

    def _heads(self, ch: int) -> tuple[int, int]:
        num_heads, dim_head = super()._heads(ch)
        if self._legacy:
            dim_head = ch // num_heads if self._spatial_tf else self.num_head_channels
        return num_heads, dim_head

    def _resblock(self, ch, out_ch, down=False, up=False):
        kw = dict(
            channels=ch,
            emb_channels=4 * self.model_channels,
            dropout=self.dropout,
            out_channels=out_ch,
            down=down,
            up=up,
            **self._res_kw,
        )
        if self.use_temporal_resblocks:
            return PostHocResBlockWithTime(**kw, **self._time_res_kw)
        return ResBlock(**kw)

    def _attention(self, ch, num_heads, dim_head, depth):
        kw = self._attn_kw
        if not self._spatial_tf:
            return PostHocAttentionBlockWithTimeMixing(
                ch,
                num_heads,
                dim_head,
                use_checkpoint=self.use_checkpoint,
                use_new_attention_order=self._new_order,
                dropout=self.dropout,
                ff_in=kw["ff_in"],
                use_spatial_context=kw["use_spatial_context"],
                merge_strategy=kw["merge_strategy"],
                merge_factor=kw["merge_factor"],
                attn_mode=kw["attn_mode"],
                disable_temporal_crossattention=kw["disable_temporal_crossattention"],
            )
        if self._motion:
            return PostHocSpatialTransformerWithTimeMixingAndMotion(
                ch, num_heads, dim_head, depth=depth, **kw, **self._motion_kw
            )
        return PostHocSpatialTransformerWithTimeMixing(ch, num_heads, dim_head, depth=depth, **kw)

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
        emb = self._embedding(x, timesteps, y)
        return self._run(
            x,
            emb,
            context=context,
            image_only_indicator=image_only_indicator,
            cond_view=cond_view,
            cond_motion=cond_motion,
            time_context=time_context,
            num_video_frames=num_video_frames,
        )
