"""Temporal transformer blocks for video UNets (Blattmann et al., 2023, SVD).

:class:`VideoTransformerBlock` attends along the frame axis of a ``(B*T, S, C)``
token tensor; :class:`SpatialVideoTransformer` interleaves it with the spatial
blocks of a :class:`~sgm.modules.attention.SpatialTransformer` and blends the two
paths with an :class:`~sgm.modules.blending.AlphaBlender`.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from .attention import FeedForward, SpatialTransformer, attention_class
from .blending import AlphaBlender
from .layers import checkpoint, linear, timestep_embedding


class TimeMixSequential(nn.Sequential):
    """A sequence of time-mixing blocks, each called as ``block(x, context, timesteps)``."""

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        timesteps: int | None = None,
    ) -> torch.Tensor:
        for layer in self:
            x = layer(x, context, timesteps)
        return x


class VideoTransformerBlock(nn.Module):
    """Transformer block over the time axis: ``(B*T, S, C)`` tokens attend across ``T``.

    Args:
        timesteps: fixed number of frames (else given per call).
        ff_in / inner_dim: an extra input MLP (``norm_in``, ``ff_in``) to ``inner_dim``.
        disable_self_attn: ``attn1`` attends to ``context`` instead of itself.
        disable_temporal_crossattention: no ``attn2``/``norm2``.
        switch_temporal_ca_to_sa: ``attn2`` is a second self-attention.
    """

    def __init__(
        self,
        dim: int,
        n_heads: int,
        d_head: int,
        dropout: float = 0.0,
        context_dim: int | None = None,
        gated_ff: bool = True,
        checkpoint: bool = True,
        timesteps: int | None = None,
        ff_in: bool = False,
        inner_dim: int | None = None,
        attn_mode: str = "softmax",
        disable_self_attn: bool = False,
        disable_temporal_crossattention: bool = False,
        switch_temporal_ca_to_sa: bool = False,
    ):
        super().__init__()
        attn_cls = attention_class(attn_mode)
        use_ff_in = ff_in or inner_dim is not None
        inner_dim = dim if inner_dim is None else inner_dim
        if n_heads * d_head != inner_dim:
            raise ValueError(
                f"n_heads * d_head = {n_heads * d_head} must equal inner_dim {inner_dim}"
            )
        if disable_temporal_crossattention and switch_temporal_ca_to_sa:
            raise ValueError(
                "switch_temporal_ca_to_sa needs attn2; it cannot be combined with "
                "disable_temporal_crossattention"
            )
        self.is_res = inner_dim == dim
        self.ff_in = None
        if use_ff_in:
            self.norm_in = nn.LayerNorm(dim)
            self.ff_in = FeedForward(dim, dim_out=inner_dim, dropout=dropout, glu=gated_ff)
        self.timesteps = timesteps
        self.disable_self_attn = disable_self_attn
        self.attn1 = attn_cls(
            query_dim=inner_dim,
            heads=n_heads,
            dim_head=d_head,
            dropout=dropout,
            context_dim=context_dim if disable_self_attn else None,
        )
        self.ff = FeedForward(inner_dim, dim_out=dim, dropout=dropout, glu=gated_ff)
        self.attn2 = None
        if not disable_temporal_crossattention:
            self.norm2 = nn.LayerNorm(inner_dim)
            self.attn2 = attn_cls(
                query_dim=inner_dim,
                context_dim=None if switch_temporal_ca_to_sa else context_dim,
                heads=n_heads,
                dim_head=d_head,
                dropout=dropout,
            )
        self.norm1 = nn.LayerNorm(inner_dim)
        self.norm3 = nn.LayerNorm(inner_dim)
        self.switch_temporal_ca_to_sa = switch_temporal_ca_to_sa
        self.checkpoint = checkpoint

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        timesteps: int | None = None,
    ) -> torch.Tensor:
        """(B*T, S, C), context (B*S, M, D) -> (B*T, S, C)."""
        return checkpoint(
            self._forward, (x, context, timesteps), self.parameters(), self.checkpoint
        )

    def _num_frames(self, timesteps: int | None) -> int:
        if self.timesteps and timesteps and self.timesteps != timesteps:
            raise ValueError(f"block built for {self.timesteps} frames, called with {timesteps}")
        frames = self.timesteps or timesteps
        if not frames:
            raise ValueError("the number of frames (timesteps) is required")
        return frames

    def _forward(self, x, context=None, timesteps=None):
        t = self._num_frames(timesteps)
        s = x.shape[1]
        x = rearrange(x, "(b t) s c -> (b s) t c", t=t)
        if self.ff_in is not None:
            h = self.ff_in(self.norm_in(x))
            x = h + x if self.is_res else h
        attn1_context = context if self.disable_self_attn else None
        x = self.attn1(self.norm1(x), context=attn1_context) + x
        if self.attn2 is not None:
            attn2_context = None if self.switch_temporal_ca_to_sa else context
            x = self.attn2(self.norm2(x), context=attn2_context) + x
        h = self.ff(self.norm3(x))
        x = h + x if self.is_res else h
        return rearrange(x, "(b s) t c -> (b t) s c", s=s, t=t)

    def get_last_layer(self) -> torch.Tensor:
        return self.ff.net[-1].weight


def frame_index_embedding(
    embed: nn.Module, frames: int, batch: int, dim: int, max_period: int, like: torch.Tensor
) -> torch.Tensor:
    """``embed`` of the sinusoidal embedding of frame indices, tiled to ``(batch*frames, 1, C)``."""
    index = torch.arange(frames, device=like.device)
    emb = embed(timestep_embedding(index, dim, max_period=max_period).to(like.dtype))
    return emb.repeat(batch, 1)[:, None, :]


def frame_embed_mlp(dim_in: int, channels: int) -> nn.Sequential:
    """``linear(dim_in, 4C) -> SiLU -> linear(4C, C)``: embeds frame (or view) positions."""
    return nn.Sequential(linear(dim_in, 4 * channels), nn.SiLU(), linear(4 * channels, channels))


def broadcast_context(context: torch.Tensor, n: int) -> torch.Tensor:
    """Repeat each row ``n`` times, row-major: ``(B, ...) -> (B*n, ...)``.

    Read-only result: a view without copying when ``B == 1`` (the attention's key and
    value projections read it once either way), else one copy.
    """
    expanded = context.unsqueeze(1).expand(context.shape[0], n, *context.shape[1:])
    return expanded.reshape(context.shape[0] * n, *context.shape[1:])


class _FrameKwargsMixin:
    """``forward_with_context`` passing the frame keywords of a ``TimestepEmbedSequential``."""

    def forward_with_context(
        self, x: torch.Tensor, emb: torch.Tensor, context=None, **kwargs
    ) -> torch.Tensor:
        """Call from a ``TimestepEmbedSequential``."""
        return self(
            x,
            context,
            time_context=kwargs.get("time_context"),
            timesteps=kwargs.get("num_video_frames"),
            image_only_indicator=kwargs.get("image_only_indicator"),
        )


class _FrameMixingTransformer(_FrameKwargsMixin, SpatialTransformer):
    """Spatial transformer whose blocks are each followed by a block over frames.

    Subclasses register the time blocks (from :meth:`_time_blocks`), a frame
    embedding and the blending used by :meth:`_blend`.
    """

    time_block_cls: type[nn.Module] = VideoTransformerBlock

    def __init__(
        self,
        in_channels: int,
        n_heads: int,
        d_head: int,
        *,
        depth: int,
        dropout: float,
        use_linear: bool,
        context_dim: int | None,
        checkpoint: bool,
        attn_mode: str,
        disable_self_attn: bool,
        use_spatial_context: bool,
        time_depth: int,
        max_time_embed_period: int,
    ):
        super().__init__(
            in_channels,
            n_heads,
            d_head,
            depth=depth,
            dropout=dropout,
            attn_type=attn_mode,
            use_checkpoint=checkpoint,
            context_dim=context_dim,
            use_linear=use_linear,
            disable_self_attn=disable_self_attn,
        )
        self.time_depth, self.depth = time_depth, depth
        self.max_time_embed_period = max_time_embed_period
        self.use_spatial_context = use_spatial_context

    def _time_blocks(self, depth: int, n_heads: int, d_head: int, **block_kw) -> nn.ModuleList:
        inner_dim = n_heads * d_head
        return nn.ModuleList(
            self.time_block_cls(inner_dim, n_heads, d_head, inner_dim=inner_dim, **block_kw)
            for _ in range(depth)
        )

    def _tokens_in(self, x):
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        x = rearrange(x, "b c h w -> b (h w) c")
        return self.proj_in(x) if self.use_linear else x

    def _tokens_out(self, x, h, w):
        if self.use_linear:
            x = self.proj_out(x)
        # Contiguous NCHW: a channels-last view here would make every following
        # convolution re-layout its weights.
        x = rearrange(x, "b (h w) c -> b c h w", h=h, w=w).contiguous()
        return x if self.use_linear else self.proj_out(x)

    def _time_context(self, context, time_context, timesteps, hw):
        if self.use_spatial_context:
            if context is None or context.ndim != 3:
                raise ValueError(
                    "use_spatial_context needs a (B*T, M, D) context, got "
                    f"{None if context is None else tuple(context.shape)}"
                )
            return broadcast_context(context[::timesteps], hw)
        if time_context is None:
            return None
        time_context = broadcast_context(time_context, hw)
        if time_context.ndim == 2:
            time_context = time_context[:, None, :]
        return time_context

    def _blend(self, x, x_mix, image_only_indicator):
        return self.time_mixer(
            x_spatial=x, x_temporal=x_mix, image_only_indicator=image_only_indicator
        )

    def _mix_frames(
        self, x, context, time_context, timesteps, image_only_indicator, time_blocks, frame_embed
    ) -> torch.Tensor:
        """Spatial blocks, each followed by ``time_blocks`` over ``timesteps`` frames."""
        if not timesteps:
            raise ValueError(f"{type(self).__name__} needs the number of frames (timesteps)")
        _, _, h, w = x.shape
        time_context = self._time_context(context, time_context, timesteps, h * w)
        tokens = self._tokens_in(x)
        frame_emb = frame_index_embedding(
            frame_embed,
            timesteps,
            tokens.shape[0] // timesteps,
            self.in_channels,
            self.max_time_embed_period,
            tokens,
        )
        for block, mix_block in zip(self.transformer_blocks, time_blocks):
            tokens = block(tokens, context=context)
            x_mix = mix_block(tokens + frame_emb, context=time_context, timesteps=timesteps)
            tokens = self._blend(tokens, x_mix, image_only_indicator)
        return self._tokens_out(tokens, h, w) + x


class SpatialVideoTransformer(_FrameMixingTransformer):
    """Spatial transformer with a temporal block after each spatial block (SVD).

    Each spatial block's output is blended with its time-mixed version by
    ``time_mixer``; frame positions enter through ``time_pos_embed``.
    With ``use_spatial_context`` the temporal cross-attention context is the first
    frame's spatial ``context``.
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
        timesteps: int | None = None,
        merge_strategy: str = "fixed",
        merge_factor: float = 0.5,
        time_context_dim: int | None = None,
        ff_in: bool = False,
        checkpoint: bool = False,
        time_depth: int = 1,
        attn_mode: str = "softmax",
        disable_self_attn: bool = False,
        disable_temporal_crossattention: bool = False,
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
        self.time_stack = self._time_blocks(
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
        self.time_pos_embed = frame_embed_mlp(in_channels, in_channels)
        self.time_mixer = AlphaBlender(alpha=merge_factor, merge_strategy=merge_strategy)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        time_context: torch.Tensor | None = None,
        timesteps: int | None = None,
        image_only_indicator: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B*T, C, H, W), context (B*T, M, D) -> (B*T, C, H, W)."""
        return self._mix_frames(
            x,
            context,
            time_context,
            timesteps,
            image_only_indicator,
            self.time_stack,
            self.time_pos_embed,
        )
