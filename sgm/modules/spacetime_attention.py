"""Multi-view and motion attention for SV4D / SV4D 2.0 (Xie et al., 2024; Yao et al., 2025).

Tokens of a ``(B*T*V, C, H, W)`` feature map (``T`` frames of ``V`` views) go through
a spatial block, a view-attention block over ``V`` and a motion-attention block over
``T``; each temporal output is blended back with the spatial path. SV4D 2.0's 4-view
release regroups the tokens differently for the view block (``use_3d_attention``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .blending import AlphaBlender, init_merge, legacy_blend
from .video_attention import (
    TimeMixSequential,
    VideoTransformerBlock,
    _FrameMixingTransformer,
    broadcast_context,
    frame_embed_mlp,
    frame_index_embedding,
)

__all__ = [
    "BasicTransformerTimeMixBlock",
    "PostHocSpatialTransformerWithTimeMixing",
    "PostHocSpatialTransformerWithTimeMixingAndMotion",
    "TimeMixSequential",
]


class BasicTransformerTimeMixBlock(VideoTransformerBlock):
    """Transformer block over a temporal (or view) axis; same layout as VideoTransformerBlock."""


class _PostHocBase(_FrameMixingTransformer):
    """Frame-mixing transformer with the SV4D merge rule (legacy ``mix_factor`` or not)."""

    time_block_cls = BasicTransformerTimeMixBlock

    def _blend(self, x, x_mix, image_only_indicator, mixer=None):
        if self.time_mix_legacy:
            return legacy_blend(self, x, x_mix, image_only_indicator, is_attn=True)
        mixer = mixer or self.time_mixer
        return mixer(x_spatial=x, x_temporal=x_mix, image_only_indicator=image_only_indicator)


class PostHocSpatialTransformerWithTimeMixing(_PostHocBase):
    """Spatial transformer followed, block by block, by attention over frames."""

    def __init__(
        self,
        in_channels: int,
        n_heads: int,
        d_head: int,
        depth: int = 1,
        dropout: float = 0.0,
        use_linear: bool = False,
        context_dim: int | None = None,
        use_spatial_context: bool = False,
        timesteps: int | None = None,
        merge_strategy: str = "fixed",
        merge_factor: float = 0.5,
        apply_sigmoid_to_merge: bool = True,
        time_context_dim: int | None = None,
        ff_in: bool = False,
        checkpoint: bool = False,
        time_depth: int = 1,
        attn_mode: str = "softmax",
        disable_self_attn: bool = False,
        disable_temporal_crossattention: bool = False,
        time_mix_legacy: bool = True,
        max_time_embed_period: int = 10000,
    ):
        super().__init__(
            in_channels,
            n_heads,
            d_head,
            depth=depth,
            dropout=dropout,
            use_linear=use_linear,
            context_dim=context_dim,
            checkpoint=checkpoint,
            attn_mode=attn_mode,
            disable_self_attn=disable_self_attn,
            use_spatial_context=use_spatial_context,
            time_depth=time_depth,
            max_time_embed_period=max_time_embed_period,
        )
        if use_spatial_context:
            time_context_dim = context_dim
        self.time_mix_blocks = self._time_blocks(
            depth,
            n_heads,
            d_head,
            dropout=dropout,
            context_dim=time_context_dim,
            timesteps=timesteps,
            checkpoint=checkpoint,
            ff_in=ff_in,
            attn_mode=attn_mode,
            disable_self_attn=disable_self_attn,
            disable_temporal_crossattention=disable_temporal_crossattention,
        )
        self.time_mix_time_embed = frame_embed_mlp(in_channels, in_channels)
        init_merge(self, merge_strategy, merge_factor, apply_sigmoid_to_merge, time_mix_legacy)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        time_context: torch.Tensor | None = None,
        timesteps: int | None = None,
        image_only_indicator: torch.Tensor | None = None,
        cond_view: torch.Tensor | None = None,
        cond_motion: torch.Tensor | None = None,
        time_step: int | None = None,
        name: str | None = None,
    ) -> torch.Tensor:
        """(B*T, C, H, W), context (B*T, M, D) -> (B*T, C, H, W)."""
        return self._mix_frames(
            x,
            context,
            time_context,
            timesteps,
            image_only_indicator,
            self.time_mix_blocks,
            self.time_mix_time_embed,
        )


class PostHocSpatialTransformerWithTimeMixingAndMotion(_PostHocBase):
    """Spatial, view (camera) and motion attention over ``(B*T*V)`` frames (SV4D).

    Args:
        use_camera_emb: view embeddings come from the UNet embedding (``cam``) of the
            first frame of each view instead of view indices (input ``adm_in_channels``).
        use_3d_attention: the SV4D 2.0 4-view layout. The view mixer is given the
            tokens one row per (clip, view, pixel) over the frames,
            ``(B*V*H*W, T, C)``, and still called with ``V`` frames, so at each frame
            it attends within runs of ``V`` consecutive (view, pixel) rows; its
            context rows, the mixers and the motion mixer are those of the 8-view
            layout. This is what the released 4-view checkpoint was trained with.
        separate_motion_merge_factor: motion blending has its own ``time_mixer_motion``
            (initialised to ``merge_factor_motion``).
        motion_context_dim: channels of the ``cond_view`` latents (default 4).

    ``image_only_indicator`` is accepted and ignored: as in the released models, the
    view and motion mixers always blend as for video frames.
    """

    def __init__(
        self,
        in_channels: int,
        n_heads: int,
        d_head: int,
        depth: int = 1,
        dropout: float = 0.0,
        use_linear: bool = False,
        context_dim: int | None = None,
        use_spatial_context: bool = False,
        use_camera_emb: bool = False,
        use_3d_attention: bool = False,
        separate_motion_merge_factor: bool = False,
        adm_in_channels: int | None = None,
        timesteps: int | None = None,
        merge_strategy: str = "fixed",
        merge_factor: float = 0.5,
        merge_factor_motion: float = 0.5,
        apply_sigmoid_to_merge: bool = True,
        time_context_dim: int | None = None,
        motion_context_dim: int | None = None,
        ff_in: bool = False,
        checkpoint: bool = False,
        time_depth: int = 1,
        attn_mode: str = "softmax",
        disable_self_attn: bool = False,
        disable_temporal_crossattention: bool = False,
        time_mix_legacy: bool = True,
        max_time_embed_period: int = 10000,
    ):
        super().__init__(
            in_channels,
            n_heads,
            d_head,
            depth=depth,
            dropout=dropout,
            use_linear=use_linear,
            context_dim=context_dim,
            checkpoint=checkpoint,
            attn_mode=attn_mode,
            disable_self_attn=disable_self_attn,
            use_spatial_context=use_spatial_context,
            time_depth=time_depth,
            max_time_embed_period=max_time_embed_period,
        )
        if use_spatial_context:
            time_context_dim = context_dim
        if use_camera_emb and adm_in_channels is None:
            raise ValueError("use_camera_emb needs adm_in_channels")
        motion_context_dim = 4 if motion_context_dim is None else motion_context_dim
        block_kw = dict(
            dropout=dropout,
            timesteps=timesteps,
            checkpoint=checkpoint,
            ff_in=ff_in,
            attn_mode=attn_mode,
            disable_self_attn=disable_self_attn,
            disable_temporal_crossattention=disable_temporal_crossattention,
        )
        self.time_mix_blocks = self._time_blocks(
            depth, n_heads, d_head, context_dim=time_context_dim, **block_kw
        )
        self.motion_blocks = self._time_blocks(
            depth, n_heads, d_head, context_dim=motion_context_dim, **block_kw
        )
        self.use_camera_emb = use_camera_emb
        self.use_3d_attention = use_3d_attention
        self.separate_motion_merge_factor = separate_motion_merge_factor
        view_in = adm_in_channels if use_camera_emb else in_channels
        self.time_mix_time_embed = frame_embed_mlp(view_in, in_channels)
        self.time_mix_motion_embed = frame_embed_mlp(in_channels, in_channels)
        init_merge(self, merge_strategy, merge_factor, apply_sigmoid_to_merge, time_mix_legacy)
        if separate_motion_merge_factor and not time_mix_legacy:
            self.time_mixer_motion = AlphaBlender(
                alpha=merge_factor_motion, merge_strategy=merge_strategy
            )

    def forward_with_context(
        self, x: torch.Tensor, emb: torch.Tensor, context=None, **kwargs
    ) -> torch.Tensor:
        """Call from a ``TimestepEmbedSequential``: the UNet embedding is ``cam``."""
        return self(
            x,
            context,
            cam=emb,
            time_context=kwargs.get("time_context"),
            timesteps=kwargs.get("num_video_frames"),
            image_only_indicator=kwargs.get("image_only_indicator"),
            cond_view=kwargs.get("cond_view"),
            cond_motion=kwargs.get("cond_motion"),
        )

    def _view_embedding(self, cam, b, t, v, like):
        if self.use_camera_emb:
            if cam is None:
                raise ValueError("use_camera_emb needs the camera embedding `cam`")
            first_frame = cam.reshape(b, t, v, -1)[:, 0].reshape(b * v, -1)
            return self.time_mix_time_embed(first_frame.to(like.dtype))[:, None, :]
        return frame_index_embedding(
            self.time_mix_time_embed, v, b, self.in_channels, self.max_time_embed_period, like
        )

    def _view_attention(self, block, x, emb_view, context, b, t, v, hw):
        # x: (b, t, v, hw, c) -> (spatial, view-mixed) tokens, both in the view layout:
        # 8-view (b*v, t*hw, c), 3-D (b*v*hw, t, c). The block regroups its input as
        # (rows / v, v) "frames" either way; the context is the same tensor for both.
        c = x.shape[-1]
        camera_context = broadcast_context(context.reshape(b * t, 1, -1), hw)
        if self.use_3d_attention:
            x_views = x.permute(0, 2, 3, 1, 4).reshape(b * v * hw, t, c)
            tokens = x_views.reshape(b, v, hw, t, c) + emb_view.reshape(b, v, 1, 1, c)
            tokens = tokens.reshape(b * v * hw, t, c)
        else:
            x_views = x.permute(0, 2, 1, 3, 4).reshape(b * v, t * hw, c)
            tokens = x_views + emb_view
        return x_views, block(tokens, context=camera_context, timesteps=v)

    def _frame_major(self, x, b, t, v, hw):
        # View-path layout -> (b*t, v*hw, c), one row per (clip, frame).
        c = x.shape[-1]
        if self.use_3d_attention:
            x = x.reshape(b, v, hw, t, c).permute(0, 3, 1, 2, 4)
        else:
            x = x.reshape(b, v, t, hw, c).transpose(1, 2)
        return x.reshape(b * t, v * hw, c)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        cam: torch.Tensor | None = None,
        time_context: torch.Tensor | None = None,
        timesteps: int | None = None,
        image_only_indicator: torch.Tensor | None = None,
        cond_view: torch.Tensor | None = None,
        cond_motion: torch.Tensor | None = None,
        time_step: int | None = None,
        name: str | None = None,
    ) -> torch.Tensor:
        """(B*T*V, C, H, W), context (B, T, D), cond_view (B*V, D2, h, w) -> same as x."""
        if context is None or context.ndim != 3 or cond_view is None:
            raise ValueError("needs context (B, T, D) and cond_view (B*V, C, h, w)")
        _, _, h, w = x.shape
        hw = h * w
        x_in = x
        b, t, d1 = context.shape
        v, d2 = cond_view.shape[0] // b, cond_view.shape[1]
        if x.shape[0] != b * t * v:
            raise ValueError(f"x has {x.shape[0]} frames, expected B*T*V = {b * t * v}")
        cond_view = F.interpolate(cond_view, size=(h, w), mode="bilinear")
        spatial_context = broadcast_context(context.reshape(b * t, 1, d1), v)
        motion_context = cond_view.permute(0, 2, 3, 1).reshape(-1, 1, d2)
        # The view and motion mixers always blend as for video frames, whatever
        # image_only_indicator says (the released checkpoints were trained so).
        no_images = x.new_zeros(1, 1)
        x = self._tokens_in(x)
        c = x.shape[-1]
        emb_time = frame_index_embedding(
            self.time_mix_motion_embed, t, b, self.in_channels, self.max_time_embed_period, x
        )
        emb_view = self._view_embedding(cam, b, t, v, x)
        motion_mixer = getattr(self, "time_mixer_motion", None)
        blocks = zip(self.transformer_blocks, self.time_mix_blocks, self.motion_blocks)
        for block, view_block, motion_block in blocks:
            x = block(x, context=spatial_context)
            x, x_mix = self._view_attention(
                view_block, x.reshape(b, t, v, hw, c), emb_view, context, b, t, v, hw
            )
            x = self._blend(x, x_mix, no_images)
            x = self._frame_major(x, b, t, v, hw)
            x_mix = motion_block(x + emb_time, context=motion_context, timesteps=t)
            x = self._blend(x, x_mix, no_images, motion_mixer)
            x = x.reshape(b * t * v, hw, c)
        return self._tokens_out(x, h, w) + x_in
