"""Attention layers: cross/self attention over tokens, linear and spatial attention."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from ..util import default
from . import run_cache
from ._attention_backend import scaled_dot_product
from .diffusionmodules import tgate


def uniq(arr) -> list:
    """Unique elements of ``arr`` in first-seen order."""
    return list(dict.fromkeys(arr))


def max_neg_value(t: torch.Tensor) -> float:
    """The most negative finite value of ``t``'s dtype."""
    return -torch.finfo(t.dtype).max


def init_(tensor: torch.Tensor) -> torch.Tensor:
    """Uniform init in ``[-1/sqrt(d), 1/sqrt(d)]`` with ``d`` the last dimension."""
    std = 1 / tensor.shape[-1] ** 0.5
    return tensor.uniform_(-std, std)


def Normalize(in_channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups and eps 1e-6 (transformer input norm)."""
    return nn.GroupNorm(num_groups=32, num_channels=in_channels, eps=1e-6, affine=True)


def _split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    # (b, n, h*d) -> (b, h, n, d) as a view.
    b, n, _ = t.shape
    return t.view(b, n, heads, -1).transpose(1, 2)


def _merge_heads(t: torch.Tensor) -> torch.Tensor:
    # (b, h, n, d) -> (b, n, h*d)
    b, h, n, d = t.shape
    return t.transpose(1, 2).reshape(b, n, h * d)


class GEGLU(nn.Module):
    """Gated GELU projection (Shazeer, 2020): ``a * gelu(b)`` with ``[a, b] = W x``."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        if torch.is_grad_enabled():
            return x * F.gelu(gate)
        return F.gelu(gate).mul_(x)  # same products, one activation-sized buffer fewer


class FeedForward(nn.Module):
    """Transformer MLP: ``net.0`` (GEGLU or Linear+GELU), ``net.1`` dropout, ``net.2``."""

    def __init__(
        self,
        dim: int,
        dim_out: int | None = None,
        mult: int = 4,
        glu: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        inner_dim = int(dim * mult)
        dim_out = default(dim_out, dim)
        project_in = (
            GEGLU(dim, inner_dim) if glu else nn.Sequential(nn.Linear(dim, inner_dim), nn.GELU())
        )
        self.net = nn.Sequential(project_in, nn.Dropout(dropout), nn.Linear(inner_dim, dim_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CrossAttention(nn.Module):
    """Multi-head attention of ``x`` over ``context`` (self-attention without it).

    Args:
        query_dim: channels of ``x``.
        context_dim: channels of ``context`` (default ``query_dim``).
        heads, dim_head: number and width of heads.
        backend: optional ``torch.nn.attention.SDPBackend`` pinning the SDPA kernel.
    """

    attention_request = "sdpa"

    def __init__(
        self,
        query_dim: int,
        context_dim: int | None = None,
        heads: int = 8,
        dim_head: int = 64,
        dropout: float = 0.0,
        backend=None,
    ):
        super().__init__()
        inner_dim = dim_head * heads
        context_dim = default(context_dim, query_dim)
        self.scale = dim_head**-0.5
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(dropout))
        self.backend = backend

    def _kernel_context(self):
        if self.backend is None:
            return contextlib.nullcontext()
        from torch.nn.attention import sdpa_kernel

        return sdpa_kernel(self.backend)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        additional_tokens: torch.Tensor | None = None,
        n_times_crossframe_attn_in_self: int = 0,
    ) -> torch.Tensor:
        """(B, N, query_dim), context (B, M, context_dim) -> (B, N, query_dim)."""
        gate = None if torch.compiler.is_compiling() else tgate.active()
        if gate is not None:  # T-GATE: computed, kept or reused as the step's plan says
            return tgate.attend(
                gate,
                self,
                x,
                context,
                lambda: self._attention(
                    x, context, mask, additional_tokens, n_times_crossframe_attn_in_self
                ),
            )
        return self._attention(x, context, mask, additional_tokens, n_times_crossframe_attn_in_self)

    def _attention(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None,
        mask: torch.Tensor | None,
        additional_tokens: torch.Tensor | None,
        n_times_crossframe_attn_in_self: int,
    ) -> torch.Tensor:
        if additional_tokens is not None:
            n_extra = additional_tokens.shape[1]
            x = torch.cat([additional_tokens, x], dim=1)
        q = self.to_q(x)
        if context is None:
            k, v = self.to_k(x), self.to_v(x)
        else:  # the same context at every step of a sampling run: project it once
            k, v = run_cache.reuse(
                (self, "context_kv"),
                (context, self.to_k.weight, self.to_v.weight),
                lambda: (self.to_k(context), self.to_v(context)),
            )
        if n_times_crossframe_attn_in_self:
            # Every frame attends to the keys/values of the first frame of its group.
            n = n_times_crossframe_attn_in_self
            if x.shape[0] % n:
                raise ValueError(
                    f"batch {x.shape[0]} is not a multiple of n_times_crossframe_attn_in_self={n}"
                )
            k = repeat(k[::n], "b ... -> (b n) ...", n=x.shape[0] // n)
            v = repeat(v[::n], "b ... -> (b n) ...", n=x.shape[0] // n)
        q, k, v = (_split_heads(t, self.heads) for t in (q, k, v))
        with self._kernel_context():
            out = scaled_dot_product(q, k, v, mask, backend=self.attention_request)
        out = _merge_heads(out)
        if additional_tokens is not None:
            out = out[:, n_extra:]
        return self.to_out(out)


class MemoryEfficientCrossAttention(CrossAttention):
    """:class:`CrossAttention` asking for the xformers backend (same weights)."""

    attention_request = "xformers"


class LinearAttention(nn.Module):
    """Linear attention (Shen et al., 2018) on a feature map: softmax over keys only."""

    def __init__(self, dim: int, heads: int = 4, dim_head: int = 32):
        super().__init__()
        self.heads = heads
        hidden_dim = dim_head * heads
        self.to_qkv = nn.Conv2d(dim, hidden_dim * 3, 1, bias=False)
        self.to_out = nn.Conv2d(hidden_dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        b, c, h, w = x.shape
        q, k, v = rearrange(
            self.to_qkv(x),
            "b (qkv heads c) h w -> qkv b heads c (h w)",
            heads=self.heads,
            qkv=3,
        )
        k = k.softmax(dim=-1)
        context = torch.einsum("bhdn,bhen->bhde", k, v)
        out = torch.einsum("bhde,bhdn->bhen", context, q)
        out = rearrange(out, "b heads c (h w) -> b (heads c) h w", h=h, w=w)
        return self.to_out(out)


class SpatialSelfAttention(nn.Module):
    """Single-head self-attention over the pixels of a feature map, residual."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.in_channels = in_channels
        self.norm = Normalize(in_channels)
        self.q = nn.Conv2d(in_channels, in_channels, 1)
        self.k = nn.Conv2d(in_channels, in_channels, 1)
        self.v = nn.Conv2d(in_channels, in_channels, 1)
        self.proj_out = nn.Conv2d(in_channels, in_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        h_ = self.norm(x)
        b, c, h, w = x.shape
        q, k, v = (
            rearrange(layer(h_), "b c h w -> b 1 (h w) c") for layer in (self.q, self.k, self.v)
        )
        out = scaled_dot_product(q, k, v)
        out = rearrange(out, "b 1 (h w) c -> b c h w", h=h, w=w)
        return x + self.proj_out(out)


class SelfAttention(nn.Module):
    """ViT-style multi-head self-attention with a fused ``qkv`` projection.

    ``attn_mode`` ("xformers", "torch" or "math") is the backend this layer asks for.
    """

    ATTENTION_MODES = ("xformers", "torch", "math")
    _REQUESTS = {"xformers": "xformers", "torch": "sdpa", "math": "math"}

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        attn_mode: str = "xformers",
    ):
        super().__init__()
        if attn_mode not in self.ATTENTION_MODES:
            raise ValueError(
                f"unknown attn_mode {attn_mode!r}; expected one of "
                f"{', '.join(self.ATTENTION_MODES)}"
            )
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.attn_mode = attn_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, C) -> (B, L, C)."""
        q, k, v = rearrange(self.qkv(x), "b l (k h d) -> k b h l d", k=3, h=self.num_heads)
        out = scaled_dot_product(
            q,
            k,
            v,
            scale=self.scale,
            dropout_p=self.attn_drop.p if self.training else 0.0,
            backend=self._REQUESTS[self.attn_mode],
        )
        return self.proj_drop(self.proj(_merge_heads(out)))
