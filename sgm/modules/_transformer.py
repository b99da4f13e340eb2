"""Transformer blocks over image tokens: BasicTransformerBlock, SpatialTransformer."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from . import token_merging
from ._attention_layers import (
    CrossAttention,
    FeedForward,
    MemoryEfficientCrossAttention,
    Normalize,
)
from .layers import checkpoint, zero_module

logger = logging.getLogger(__name__)

ATTENTION_MODES = {
    "softmax": CrossAttention,
    "softmax-xformers": MemoryEfficientCrossAttention,
}


def attention_class(attn_mode: str) -> type[CrossAttention]:
    """The attention class for an ``attn_mode`` ('softmax' or 'softmax-xformers')."""
    if attn_mode not in ATTENTION_MODES:
        raise ValueError(
            f"unknown attn_mode {attn_mode!r}; expected one of {', '.join(ATTENTION_MODES)}"
        )
    return ATTENTION_MODES[attn_mode]


class BasicTransformerBlock(nn.Module):
    """Self-attention, cross-attention and a gated MLP, each pre-norm and residual.

    ``disable_self_attn`` makes ``attn1`` attend to ``context`` too.
    """

    ATTENTION_MODES = ATTENTION_MODES

    def __init__(
        self,
        dim: int,
        n_heads: int,
        d_head: int,
        dropout: float = 0.0,
        context_dim: int | None = None,
        gated_ff: bool = True,
        checkpoint: bool = True,
        disable_self_attn: bool = False,
        attn_mode: str = "softmax",
        sdp_backend=None,
    ):
        super().__init__()
        attn_cls = attention_class(attn_mode)
        self.disable_self_attn = disable_self_attn
        self.attn1 = attn_cls(
            query_dim=dim,
            heads=n_heads,
            dim_head=d_head,
            dropout=dropout,
            context_dim=context_dim if disable_self_attn else None,
            backend=sdp_backend,
        )
        self.ff = FeedForward(dim, dropout=dropout, glu=gated_ff)
        self.attn2 = attn_cls(
            query_dim=dim,
            context_dim=context_dim,
            heads=n_heads,
            dim_head=d_head,
            dropout=dropout,
            backend=sdp_backend,
        )
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.checkpoint = checkpoint

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        additional_tokens: torch.Tensor | None = None,
        n_times_crossframe_attn_in_self: int = 0,
    ) -> torch.Tensor:
        """(B, N, dim), context (B, M, context_dim) -> (B, N, dim)."""
        return checkpoint(
            self._forward,
            (x, context, additional_tokens, n_times_crossframe_attn_in_self),
            self.parameters(),
            self.checkpoint,
        )

    def _forward(self, x, context=None, additional_tokens=None, n_times_crossframe_attn_in_self=0):
        # TorchDynamo traces the plain block (reading the context variable breaks graphs)
        merging = None if torch.compiler.is_compiling() else token_merging.active()
        if merging is not None:
            return self._merged_forward(
                merging, x, context, additional_tokens, n_times_crossframe_attn_in_self
            )
        # Residual sums are added in place into the fresh layer outputs (saves one
        # activation-sized allocation each; autograd does not need those outputs).
        x = self.attn1(
            self.norm1(x),
            context=context if self.disable_self_attn else None,
            additional_tokens=additional_tokens,
            n_times_crossframe_attn_in_self=(
                0 if self.disable_self_attn else n_times_crossframe_attn_in_self
            ),
        ).add_(x)
        x = self.attn2(self.norm2(x), context=context, additional_tokens=additional_tokens).add_(x)
        return self.ff(self.norm3(x)).add_(x)

    def _merged_forward(self, merging, x, context, additional_tokens, n_times_crossframe):
        """:meth:`_forward` on merged tokens (``sgm.modules.token_merging``)."""
        m_a, m_c, m_m, u_a, u_c, u_m = merging.plan(x)
        x = u_a(
            self.attn1(
                m_a(self.norm1(x)),
                context=context if self.disable_self_attn else None,
                additional_tokens=additional_tokens,
                n_times_crossframe_attn_in_self=0 if self.disable_self_attn else n_times_crossframe,
            )
        ).add_(x)
        x = u_c(
            self.attn2(m_c(self.norm2(x)), context=context, additional_tokens=additional_tokens)
        ).add_(x)
        return u_m(self.ff(m_m(self.norm3(x)))).add_(x)


class BasicTransformerSingleLayerBlock(nn.Module):
    """One (cross-)attention layer and an MLP, each pre-norm and residual."""

    ATTENTION_MODES = ATTENTION_MODES

    def __init__(
        self,
        dim: int,
        n_heads: int,
        d_head: int,
        dropout: float = 0.0,
        context_dim: int | None = None,
        gated_ff: bool = True,
        checkpoint: bool = True,
        attn_mode: str = "softmax",
    ):
        super().__init__()
        self.attn1 = attention_class(attn_mode)(
            query_dim=dim,
            heads=n_heads,
            dim_head=d_head,
            dropout=dropout,
            context_dim=context_dim,
        )
        self.ff = FeedForward(dim, dropout=dropout, glu=gated_ff)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.checkpoint = checkpoint

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, dim) -> (B, N, dim)."""
        return checkpoint(self._forward, (x, context), self.parameters(), self.checkpoint)

    def _forward(self, x, context=None):
        x = self.attn1(self.norm1(x), context=context).add_(x)
        return self.ff(self.norm2(x)).add_(x)


def _per_block_context_dims(context_dim, depth: int) -> list:
    if context_dim is None:
        return [None] * depth
    if isinstance(context_dim, int):
        return [context_dim] * depth
    dims = [int(d) for d in context_dim]
    if len(dims) != depth:
        if len(set(dims)) != 1:
            raise ValueError(
                f"context_dim {dims} has {len(dims)} entries for depth {depth}; "
                "give one per block or a single repeated value"
            )
        dims = [dims[0]] * depth
    return dims


class SpatialTransformer(nn.Module):
    """Transformer over the pixels of a feature map, residual (Rombach et al., 2022).

    Norm, projection in (1x1 conv, or linear with ``use_linear``), ``depth``
    :class:`BasicTransformerBlock` layers, zero-initialised projection out.
    ``context_dim`` may be a list with one entry per block.
    """

    def __init__(
        self,
        in_channels: int,
        n_heads: int,
        d_head: int,
        depth: int = 1,
        dropout: float = 0.0,
        context_dim: int | Sequence[int] | None = None,
        disable_self_attn: bool = False,
        use_linear: bool = False,
        attn_type: str = "softmax",
        use_checkpoint: bool = True,
        sdp_backend=None,
    ):
        super().__init__()
        context_dims = _per_block_context_dims(context_dim, depth)
        self.in_channels = in_channels
        inner_dim = n_heads * d_head
        self.norm = Normalize(in_channels)
        if use_linear:
            self.proj_in = nn.Linear(in_channels, inner_dim)
        else:
            self.proj_in = nn.Conv2d(in_channels, inner_dim, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(
                inner_dim,
                n_heads,
                d_head,
                dropout=dropout,
                context_dim=context_dims[d],
                disable_self_attn=disable_self_attn,
                attn_mode=attn_type,
                checkpoint=use_checkpoint,
                sdp_backend=sdp_backend,
            )
            for d in range(depth)
        )
        if use_linear:
            self.proj_out = zero_module(nn.Linear(inner_dim, in_channels))
        else:
            self.proj_out = zero_module(nn.Conv2d(inner_dim, in_channels, 1))
        self.use_linear = use_linear

    def forward_with_context(
        self, x: torch.Tensor, emb: torch.Tensor, context=None, **kwargs
    ) -> torch.Tensor:
        """Call from a ``TimestepEmbedSequential``: uses ``context`` only."""
        return self(x, context)

    def forward(self, x: torch.Tensor, context: torch.Tensor | list | None = None) -> torch.Tensor:
        """(B, C, H, W), context (B, M, D) or a list per block -> (B, C, H, W)."""
        contexts = context if isinstance(context, list) else [context]
        b, c, h, w = x.shape
        x_in = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        # Tokens (B, H*W, C); a linear proj_in reads the strided view directly.
        x = x.flatten(2).transpose(1, 2)
        x = self.proj_in(x) if self.use_linear else x.contiguous()
        for i, block in enumerate(self.transformer_blocks):
            x = block(x, context=contexts[i if len(contexts) > 1 else 0])
        if self.use_linear:
            x = self.proj_out(x)
        # Back to contiguous NCHW: a strided view here would be channels-last, which
        # makes every following convolution re-layout its weights.
        x = x.transpose(1, 2).reshape(b, -1, h, w).contiguous()
        if not self.use_linear:
            x = self.proj_out(x)
        return x.add_(x_in)


class SimpleTransformer(nn.Module):
    """A stack of :class:`BasicTransformerSingleLayerBlock` over tokens."""

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        dim_head: int,
        context_dim: int | None = None,
        dropout: float = 0.0,
        checkpoint: bool = True,
    ):
        super().__init__()
        self.layers = nn.ModuleList(
            BasicTransformerSingleLayerBlock(
                dim,
                heads,
                dim_head,
                dropout=dropout,
                context_dim=context_dim,
                attn_mode="softmax-xformers",
                checkpoint=checkpoint,
            )
            for _ in range(depth)
        )

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, dim) -> (B, N, dim)."""
        for layer in self.layers:
            x = layer(x, context)
        return x
