"""Layer primitives shared by the networks: embeddings, norms, convolutions, checkpointing.

A leaf module: it imports nothing from sgm, so attention, VAE and UNet code can all build
on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint as _torch_checkpoint

__all__ = [
    "GroupNorm32",
    "SiLU",
    "avg_pool_nd",
    "checkpoint",
    "conv_nd",
    "linear",
    "normalization",
    "scale_module",
    "timestep_embedding",
    "zero_module",
]


def checkpoint(func: Callable, inputs: Sequence, params: Iterable, flag: bool) -> torch.Tensor:
    """Gradient checkpointing (non-reentrant) when ``flag`` and gradients are on."""
    if flag and torch.is_grad_enabled():
        return _torch_checkpoint(func, *inputs, use_reentrant=False)
    return func(*inputs)


def timestep_embedding(
    timesteps: torch.Tensor,
    dim: int,
    max_period: int = 10000,
    repeat_only: bool = False,
) -> torch.Tensor:
    """Sinusoidal embeddings ``[cos, sin]`` of (possibly fractional) timesteps, (N,) -> (N, dim)."""
    if repeat_only:
        return timesteps[:, None].expand(-1, dim).to(torch.float32)
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period)
        * torch.arange(half, dtype=torch.float32, device=timesteps.device)
        / half
    )
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


def zero_module(module: nn.Module) -> nn.Module:
    """Zero the parameters of ``module`` and return it."""
    for p in module.parameters():
        p.detach().zero_()
    return module


def scale_module(module: nn.Module, scale: float) -> nn.Module:
    """Scale the parameters of ``module`` by ``scale`` and return it."""
    for p in module.parameters():
        p.detach().mul_(scale)
    return module


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32, cast back to the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        out = F.group_norm(x.float(), self.num_groups, weight, bias, self.eps)
        return out.type(x.dtype)


def normalization(channels: int) -> nn.Module:
    """The UNet's normalisation layer: GroupNorm with 32 groups."""
    return GroupNorm32(32, channels)


class SiLU(nn.SiLU):
    """Kept for old imports; same as ``torch.nn.SiLU``."""


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` (same parameters and state-dict keys) that runs a time-only kernel
    ``(k, 1, 1)`` as a 2-D convolution over ``(time, pixels)``: the same sums, through the
    faster 2-D kernels (PyTorch's CPU backend has no fast path for such 3-D kernels)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._time_only or x.dim() != 5:
            return super().forward(x)
        b, c, t, h, w = x.shape
        out = F.conv2d(
            x.reshape(b, c, t, h * w),
            self.weight.squeeze(-1),
            self.bias,
            padding=(self.padding[0], 0),
        )
        return out.view(b, out.shape[1], out.shape[2], h, w)

    @property
    def _time_only(self) -> bool:
        return (
            isinstance(self.padding, tuple)
            and self.kernel_size[1:] == (1, 1)
            and self.padding[1:] == (0, 0)
            and self.stride == (1, 1, 1)
            and self.dilation == (1, 1, 1)
            and self.groups == 1
            and self.padding_mode == "zeros"
        )


_CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: Conv3d}
_POOLS = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}


def conv_nd(dims: int, *args, **kwargs) -> nn.Module:
    """A 1-D, 2-D or 3-D convolution."""
    if dims not in _CONVS:
        raise ValueError(f"unsupported dimensions: {dims}; expected 1, 2 or 3")
    return _CONVS[dims](*args, **kwargs)


def linear(*args, **kwargs) -> nn.Linear:
    """A linear layer."""
    return nn.Linear(*args, **kwargs)


def avg_pool_nd(dims: int, *args, **kwargs) -> nn.Module:
    """A 1-D, 2-D or 3-D average pooling."""
    if dims not in _POOLS:
        raise ValueError(f"unsupported dimensions: {dims}; expected 1, 2 or 3")
    return _POOLS[dims](*args, **kwargs)
