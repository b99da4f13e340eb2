"""UNet building blocks: timestep-conditioned residual blocks, resampling, attention.

Blocks inside a :class:`TimestepEmbedSequential` receive what they need through one
protocol: a block class that defines ``forward_with_context(self, x, emb, context=None,
**kwargs)`` is called through it with every argument the sequence got (``kwargs`` holds
extras such as ``num_video_frames`` or ``image_only_indicator``); any other block is
called as ``block(x)``. :class:`TimestepBlock` maps it to ``forward(x, emb)`` and
``SpatialTransformer`` to ``forward(x, context)``; subclasses override it to take more.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .._attention_backend import scaled_dot_product
from ..layers import (
    avg_pool_nd,
    checkpoint,
    conv_nd,
    linear,
    normalization,
    timestep_embedding,
    zero_module,
)


class Timestep(nn.Module):
    """Sinusoidal timestep embedding as a module: (N,) -> (N, dim)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return timestep_embedding(t, self.dim)


class TimestepBlock(nn.Module):
    """A block whose ``forward(x, emb)`` also takes the timestep embedding."""

    @abstractmethod
    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Apply the block to ``x`` given the embedding ``emb``."""

    def forward_with_context(
        self, x: torch.Tensor, emb: torch.Tensor, context=None, **kwargs
    ) -> torch.Tensor:
        """Call from a :class:`TimestepEmbedSequential`: uses ``emb`` only."""
        return self(x, emb)


def call_layer(
    layer: nn.Module, x: torch.Tensor, emb: torch.Tensor, context=None, **kwargs
) -> torch.Tensor:
    """One child of a ``TimestepEmbedSequential``: ``emb``/``context``/extras go to the
    layers that take them (``forward_with_context``), ``x`` alone to the others."""
    hook = getattr(type(layer), "forward_with_context", None)
    if hook is None:
        return layer(x)
    return hook(layer, x, emb, context, **kwargs)


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    """A sequence passing ``emb``/``context``/extras to the children that take them."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context=None, **kwargs) -> torch.Tensor:
        for layer in self:
            x = call_layer(layer, x, emb, context, **kwargs)
        return x

    def forward_with_context(
        self, x: torch.Tensor, emb: torch.Tensor, context=None, **kwargs
    ) -> torch.Tensor:
        """Nested sequences forward everything."""
        return self(x, emb, context, **kwargs)


def _tuple(value) -> int | tuple:
    return tuple(int(v) for v in value) if isinstance(value, Iterable) else value


class Upsample(nn.Module):
    """Nearest-neighbour upsampling by ``scale_factor``, optionally followed by a conv.

    For ``dims=3`` the first (time) axis is upsampled only when ``third_up``.
    """

    def __init__(
        self,
        channels: int,
        use_conv: bool,
        dims: int = 2,
        out_channels: int | None = None,
        padding: int = 1,
        third_up: bool = False,
        kernel_size: int = 3,
        scale_factor: int = 2,
    ):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.dims = dims
        self.third_up = third_up
        self.scale_factor = scale_factor
        if use_conv:
            self.conv = conv_nd(
                dims,
                channels,
                self.out_channels,
                _tuple(kernel_size),
                padding=_tuple(padding),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *S) -> (B, C_out, *S * scale)."""
        assert x.shape[1] == self.channels
        if self.dims == 3:
            t_factor = self.scale_factor if self.third_up else 1
            size = (
                x.shape[2] * t_factor,
                x.shape[3] * self.scale_factor,
                x.shape[4] * self.scale_factor,
            )
            x = F.interpolate(x, size, mode="nearest")
        else:
            x = F.interpolate(x, scale_factor=self.scale_factor, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """Stride-2 downsampling by a conv (``use_conv``) or average pooling.

    For ``dims=3`` the first (time) axis is downsampled only when ``third_down``.
    """

    def __init__(
        self,
        channels: int,
        use_conv: bool,
        dims: int = 2,
        out_channels: int | None = None,
        padding: int = 1,
        third_down: bool = False,
    ):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.dims = dims
        stride = 2 if dims != 3 else ((2, 2, 2) if third_down else (1, 2, 2))
        if use_conv:
            self.op = conv_nd(dims, channels, self.out_channels, 3, stride=stride, padding=padding)
        else:
            if self.channels != self.out_channels:
                raise ValueError(
                    f"pooling Downsample keeps channels; got {channels} -> {out_channels}"
                )
            self.op = avg_pool_nd(dims, kernel_size=stride, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *S) -> (B, C_out, *S / 2)."""
        assert x.shape[1] == self.channels
        return self.op(x)


class ResBlock(TimestepBlock):
    """Residual block conditioned on the timestep embedding (Ho et al., 2020).

    Args:
        use_scale_shift_norm: FiLM-style ``norm(h) * (1 + scale) + shift`` conditioning.
        up, down: resample inside the block.
        kernel_size: int or per-axis sequence (e.g. ``[3, 1, 1]`` for ``dims=3``).
        exchange_temb_dims: ``emb`` is ``(B, T, C)`` and is moved to ``(B, C, T, ...)``.
        skip_t_emb: no timestep conditioning (``emb_layers`` is None).
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_conv: bool = False,
        use_scale_shift_norm: bool = False,
        dims: int = 2,
        use_checkpoint: bool = False,
        up: bool = False,
        down: bool = False,
        kernel_size: int | Sequence[int] = 3,
        exchange_temb_dims: bool = False,
        skip_t_emb: bool = False,
    ):
        super().__init__()
        self.channels = channels
        self.emb_channels = emb_channels
        self.dropout = dropout
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.use_checkpoint = use_checkpoint
        self.use_scale_shift_norm = use_scale_shift_norm
        self.exchange_temb_dims = exchange_temb_dims
        kernel_size = _tuple(kernel_size)
        if isinstance(kernel_size, tuple):
            padding = tuple(k // 2 for k in kernel_size)
        else:
            padding = kernel_size // 2
        out = self.out_channels

        self.in_layers = nn.Sequential(
            normalization(channels),
            nn.SiLU(),
            conv_nd(dims, channels, out, kernel_size, padding=padding),
        )
        self.updown = up or down
        if up:
            self.h_upd = Upsample(channels, False, dims)
            self.x_upd = Upsample(channels, False, dims)
        elif down:
            self.h_upd = Downsample(channels, False, dims)
            self.x_upd = Downsample(channels, False, dims)
        else:
            self.h_upd = self.x_upd = nn.Identity()

        self.skip_t_emb = skip_t_emb
        self.emb_out_channels = 2 * out if use_scale_shift_norm else out
        if skip_t_emb:
            if use_scale_shift_norm:
                raise ValueError("skip_t_emb cannot be combined with use_scale_shift_norm")
            self.emb_layers = None
            self.exchange_temb_dims = False
        else:
            self.emb_layers = nn.Sequential(nn.SiLU(), linear(emb_channels, self.emb_out_channels))

        self.out_layers = nn.Sequential(
            normalization(out),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(conv_nd(dims, out, out, kernel_size, padding=padding)),
        )
        if out == channels:
            self.skip_connection = nn.Identity()
        elif use_conv:
            self.skip_connection = conv_nd(dims, channels, out, kernel_size, padding=padding)
        else:
            self.skip_connection = conv_nd(dims, channels, out, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """(B, C, *S), emb (B, emb_channels) -> (B, out_channels, *S')."""
        return checkpoint(self._forward, (x, emb), self.parameters(), self.use_checkpoint)

    def _forward(self, x, emb):
        if self.updown:
            in_rest, in_conv = self.in_layers[:-1], self.in_layers[-1]
            h = in_conv(self.h_upd(in_rest(x)))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        if self.skip_t_emb:
            return self.out_layers(h).add_(self.skip_connection(x))
        emb_out = self.emb_layers(emb).type(h.dtype)
        emb_out = emb_out[(...,) + (None,) * (h.ndim - emb_out.ndim)]
        if self.use_scale_shift_norm:
            out_norm, out_rest = self.out_layers[0], self.out_layers[1:]
            scale, shift = emb_out.chunk(2, dim=1)
            h = out_rest(out_norm(h) * (1 + scale) + shift)
        else:
            if self.exchange_temb_dims:
                emb_out = rearrange(emb_out, "b t c ... -> b c t ...")
            h = self.out_layers(h + emb_out)
        return h.add_(self.skip_connection(x))


def _heads_first(t: torch.Tensor, heads: int) -> torch.Tensor:
    # (B*heads, ch, L) -> (B, heads, L, ch)
    bh, ch, length = t.shape
    return t.reshape(bh // heads, heads, ch, length).transpose(2, 3)


class QKVAttentionLegacy(nn.Module):
    """Attention on a ``(B, heads*3*ch, L)`` tensor laid out per head as ``[q, k, v]``."""

    def __init__(self, n_heads: int):
        super().__init__()
        self.n_heads = n_heads

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        """(B, H*3*C, L) -> (B, H*C, L)."""
        bs, width, length = qkv.shape
        ch = width // (3 * self.n_heads)
        q, k, v = qkv.reshape(bs * self.n_heads, ch * 3, length).split(ch, dim=1)
        q, k, v = (_heads_first(t, self.n_heads) for t in (q, k, v))
        out = scaled_dot_product(q, k, v)
        return out.transpose(2, 3).reshape(bs, -1, length)


class QKVAttention(nn.Module):
    """Attention on a ``(B, 3*heads*ch, L)`` tensor laid out as ``[q, k, v]`` blocks."""

    def __init__(self, n_heads: int):
        super().__init__()
        self.n_heads = n_heads

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        """(B, 3*H*C, L) -> (B, H*C, L)."""
        bs, width, length = qkv.shape
        ch = width // (3 * self.n_heads)
        q, k, v = (
            _heads_first(t.reshape(bs * self.n_heads, ch, length), self.n_heads)
            for t in qkv.chunk(3, dim=1)
        )
        out = scaled_dot_product(q, k, v)
        return out.transpose(2, 3).reshape(bs, -1, length)


class AttentionBlock(nn.Module):
    """Self-attention over all spatial positions of a feature map, residual."""

    def __init__(
        self,
        channels: int,
        num_heads: int = 1,
        num_head_channels: int = -1,
        use_checkpoint: bool = False,
        use_new_attention_order: bool = False,
    ):
        super().__init__()
        self.channels = channels
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(
                    f"channels {channels} not divisible by num_head_channels {num_head_channels}"
                )
            self.num_heads = channels // num_head_channels
        self.use_checkpoint = use_checkpoint
        self.norm = normalization(channels)
        self.qkv = conv_nd(1, channels, channels * 3, 1)
        attention_cls = QKVAttention if use_new_attention_order else QKVAttentionLegacy
        self.attention = attention_cls(self.num_heads)
        self.proj_out = zero_module(conv_nd(1, channels, channels, 1))

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        """(B, C, *S) -> (B, C, *S)."""
        return checkpoint(self._forward, (x,), self.parameters(), self.use_checkpoint)

    def _forward(self, x):
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        h = self.proj_out(self.attention(self.qkv(self.norm(x))))
        return (x + h).reshape(b, c, *spatial)


class AttentionPool2d(nn.Module):
    """CLIP-style attention pooling of a feature map into one vector."""

    def __init__(
        self,
        spacial_dim: int,
        embed_dim: int,
        num_heads_channels: int,
        output_dim: int | None = None,
    ):
        super().__init__()
        self.positional_embedding = nn.Parameter(
            torch.randn(embed_dim, spacial_dim**2 + 1) / embed_dim**0.5
        )
        self.qkv_proj = conv_nd(1, embed_dim, 3 * embed_dim, 1)
        self.c_proj = conv_nd(1, embed_dim, output_dim or embed_dim, 1)
        self.num_heads = embed_dim // num_heads_channels
        self.attention = QKVAttention(self.num_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, output_dim)."""
        b, c, *_ = x.shape
        x = x.reshape(b, c, -1)
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1)
        x = x + self.positional_embedding[None].to(x.dtype)
        x = self.c_proj(self.attention(self.qkv_proj(x)))
        return x[:, :, 0]
