"""Residual and attention blocks with a temporal branch, for the video UNets."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import rearrange
from torch import nn

from ...util import default
from ..blending import AlphaBlender, init_merge, legacy_blend, register_mix_factor
from ..spacetime_attention import BasicTransformerTimeMixBlock
from ..video_attention import _FrameKwargsMixin, frame_embed_mlp, frame_index_embedding
from ._unet_blocks import AttentionBlock, ResBlock


def plain_kernel(kernel_size) -> int | list[int]:
    """An int or a plain list (OmegaConf lists become Python lists)."""
    return kernel_size if isinstance(kernel_size, int) else [int(k) for k in kernel_size]


def temporal_resblock(
    channels: int,
    emb_channels: int,
    dropout: float,
    kernel_size: int | Sequence[int],
    use_checkpoint: bool = False,
    **kwargs,
) -> ResBlock:
    """ResBlock over ``(B, C, T, H, W)`` clips (``dims=3``): same width, no resampling."""
    return ResBlock(
        channels,
        emb_channels,
        dropout=dropout,
        dims=3,
        use_scale_shift_norm=False,
        use_conv=False,
        up=False,
        down=False,
        kernel_size=plain_kernel(kernel_size),
        use_checkpoint=use_checkpoint,
        **kwargs,
    )


def _temporal_resblock(channels, out_channels, emb_channels, dropout, kernel, ckpt):
    out = default(out_channels, channels)
    return temporal_resblock(out, emb_channels, dropout, kernel, ckpt, exchange_temb_dims=True)


class _ResBlockWithTime(ResBlock):
    """ResBlock whose ``(B*T, C, H, W)`` output also goes through a temporal 3-D ResBlock."""

    def forward_with_context(
        self, x: torch.Tensor, emb: torch.Tensor, context=None, **kwargs
    ) -> torch.Tensor:
        """Call from a ``TimestepEmbedSequential``."""
        return self(x, emb, kwargs.get("num_video_frames"), kwargs.get("image_only_indicator"))

    def _spatial_and_time(self, x, emb, num_video_frames, time_block):
        """Spatial output and its temporal version, both ``(B, C, T, H, W)``."""
        if not num_video_frames:
            raise ValueError(f"{type(self).__name__} needs num_video_frames")
        x = rearrange(super().forward(x, emb), "(b t) c h w -> b c t h w", t=num_video_frames)
        return x, time_block(x, rearrange(emb, "(b t) ... -> b t ...", t=num_video_frames))


class VideoResBlock(_ResBlockWithTime):
    """ResBlock followed by a 3-D (time) ResBlock, blended by ``time_mixer`` (SVD)."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        video_kernel_size: int | Sequence[int] = 3,
        merge_strategy: str = "fixed",
        merge_factor: float = 0.5,
        out_channels: int | None = None,
        use_conv: bool = False,
        use_scale_shift_norm: bool = False,
        dims: int = 2,
        use_checkpoint: bool = False,
        up: bool = False,
        down: bool = False,
    ):
        super().__init__(
            channels,
            emb_channels,
            dropout,
            out_channels=out_channels,
            use_conv=use_conv,
            use_scale_shift_norm=use_scale_shift_norm,
            dims=dims,
            use_checkpoint=use_checkpoint,
            up=up,
            down=down,
        )
        self.time_stack = _temporal_resblock(
            channels, out_channels, emb_channels, dropout, video_kernel_size, use_checkpoint
        )
        self.time_mixer = AlphaBlender(
            alpha=merge_factor,
            merge_strategy=merge_strategy,
            rearrange_pattern="b t -> b 1 t 1 1",
        )

    def forward(
        self,
        x: torch.Tensor,
        emb: torch.Tensor,
        num_video_frames: int | None = None,
        image_only_indicator: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B*T, C, H, W), emb (B*T, E) -> (B*T, C_out, H, W)."""
        x, x_time = self._spatial_and_time(x, emb, num_video_frames, self.time_stack)
        x = self.time_mixer(
            x_spatial=x, x_temporal=x_time, image_only_indicator=image_only_indicator
        )
        return rearrange(x, "b c t h w -> (b t) c h w")


class PostHocResBlockWithTime(_ResBlockWithTime):
    """ResBlock plus a time ResBlock (``time_mix_blocks``) for SV4D.

    ``time_mix_legacy`` keeps ``mix_factor`` on the block and weights the temporal
    path by alpha; otherwise ``time_mixer`` weights the spatial path. Blending never
    treats frames as still images. ``replicate_bug`` has no effect.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        time_kernel_size: int | Sequence[int] = 3,
        merge_strategy: str = "fixed",
        merge_factor: float = 0.5,
        apply_sigmoid_to_merge: bool = True,
        out_channels: int | None = None,
        use_conv: bool = False,
        use_scale_shift_norm: bool = False,
        dims: int = 2,
        use_checkpoint: bool = False,
        up: bool = False,
        down: bool = False,
        time_mix_legacy: bool = True,
        replicate_bug: bool = False,
    ):
        super().__init__(
            channels,
            emb_channels,
            dropout,
            out_channels=out_channels,
            use_conv=use_conv,
            use_scale_shift_norm=use_scale_shift_norm,
            dims=dims,
            use_checkpoint=use_checkpoint,
            up=up,
            down=down,
        )
        self.time_mix_blocks = _temporal_resblock(
            channels, out_channels, emb_channels, dropout, time_kernel_size, use_checkpoint
        )
        init_merge(
            self,
            merge_strategy,
            merge_factor,
            apply_sigmoid_to_merge,
            time_mix_legacy,
            rearrange_pattern="b t -> b 1 t 1 1",
        )

    def forward(
        self,
        x: torch.Tensor,
        emb: torch.Tensor,
        num_video_frames: int | None = None,
        image_only_indicator: torch.Tensor | None = None,
        cond_view: torch.Tensor | None = None,
        cond_motion: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B*T, C, H, W), emb (B*T, E) -> (B*T, C_out, H, W)."""
        x_spatial, x_time = self._spatial_and_time(x, emb, num_video_frames, self.time_mix_blocks)
        videos = x_spatial.shape[0]
        no_images = x.new_zeros(videos, num_video_frames)
        if self.time_mix_legacy:
            x = legacy_blend(self, x_time, x_spatial, no_images, is_attn=False)
        else:
            x = self.time_mixer(
                x_spatial=x_spatial, x_temporal=x_time, image_only_indicator=no_images
            )
        return rearrange(x, "b c t h w -> (b t) c h w")


class PostHocAttentionBlockWithTimeMixing(_FrameKwargsMixin, AttentionBlock):
    """Pixel self-attention block followed by attention over frames (SV4D, no context)."""

    def __init__(
        self,
        in_channels: int,
        n_heads: int,
        d_head: int,
        use_checkpoint: bool = False,
        use_new_attention_order: bool = False,
        dropout: float = 0.0,
        use_spatial_context: bool = False,
        merge_strategy: str = "fixed",
        merge_factor: float = 0.5,
        apply_sigmoid_to_merge: bool = True,
        ff_in: bool = False,
        attn_mode: str = "softmax",
        disable_temporal_crossattention: bool = False,
    ):
        super().__init__(
            in_channels,
            n_heads,
            d_head,
            use_checkpoint=use_checkpoint,
            use_new_attention_order=use_new_attention_order,
        )
        inner_dim = n_heads * d_head
        self.time_mix_blocks = nn.ModuleList(
            [
                BasicTransformerTimeMixBlock(
                    inner_dim,
                    n_heads,
                    d_head,
                    dropout=dropout,
                    checkpoint=use_checkpoint,
                    ff_in=ff_in,
                    attn_mode=attn_mode,
                    disable_temporal_crossattention=disable_temporal_crossattention,
                )
            ]
        )
        self.in_channels = in_channels
        self.time_mix_time_embed = frame_embed_mlp(in_channels, in_channels)
        self.use_spatial_context = use_spatial_context
        self.merge_strategy = merge_strategy
        self.apply_sigmoid_to_merge = apply_sigmoid_to_merge
        register_mix_factor(self, merge_strategy, merge_factor)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        time_context: torch.Tensor | None = None,
        timesteps: int | None = None,
        image_only_indicator: torch.Tensor | None = None,
        conv_view: torch.Tensor | None = None,
        conv_motion: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B*T, C, H, W) -> (B*T, C, H, W)."""
        if time_context is not None:
            raise NotImplementedError("time_context is not supported here")
        if not timesteps:
            raise ValueError(f"{type(self).__name__} needs the number of frames")
        _, _, h, w = x.shape
        if context is not None and self.use_spatial_context:
            context = rearrange(context, "b t ... -> (b t) ...")
            time_context = context[:, 0].repeat_interleave(h * w, dim=0)
        x = rearrange(super().forward(x), "b c h w -> b (h w) c")
        frame_emb = frame_index_embedding(
            self.time_mix_time_embed,
            timesteps,
            x.shape[0] // timesteps,
            self.in_channels,
            10000,
            x,
        )
        x_mix = self.time_mix_blocks[0](x + frame_emb, context=time_context, timesteps=timesteps)
        x = legacy_blend(self, x, x_mix, image_only_indicator, is_attn=True)
        return rearrange(x, "b (h w) c -> b c h w", h=h, w=w)
