"""Small network helpers shared by the UNets: embeddings, norms, convs, blending."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint as _torch_checkpoint

from ...util import mean_flat  # noqa: F401  (re-exported: original path)
from ._video_mixing import get_alpha  # noqa: F401  (re-exported: original path)


def make_beta_schedule(
    schedule: str,
    n_timestep: int,
    linear_start: float = 1e-4,
    linear_end: float = 2e-2,
    cosine_s: float = 8e-3,
) -> np.ndarray:
    """DDPM beta schedules (float64 numpy): linear (in sqrt space), cosine, sqrt_linear, sqrt."""
    # Built on the host whatever the default device (a numpy array comes back).
    if schedule == "linear":
        betas = (
            torch.linspace(
                linear_start**0.5,
                linear_end**0.5,
                n_timestep,
                dtype=torch.float64,
                device="cpu",
            )
            ** 2
        )
    elif schedule == "cosine":
        # Nichol & Dhariwal (2021), eq. 17.
        t = torch.arange(n_timestep + 1, dtype=torch.float64, device="cpu") / n_timestep + cosine_s
        alphas = torch.cos(t / (1 + cosine_s) * math.pi / 2) ** 2
        alphas = alphas / alphas[0]
        betas = (1 - alphas[1:] / alphas[:-1]).clamp(0, 0.999)
    elif schedule == "sqrt_linear":
        betas = torch.linspace(
            linear_start, linear_end, n_timestep, dtype=torch.float64, device="cpu"
        )
    elif schedule == "sqrt":
        betas = (
            torch.linspace(linear_start, linear_end, n_timestep, dtype=torch.float64, device="cpu")
            ** 0.5
        )
    else:
        raise ValueError(
            f"unknown beta schedule {schedule!r}; expected linear, cosine, sqrt_linear or sqrt"
        )
    return betas.numpy()


def extract_into_tensor(a: torch.Tensor, t: torch.Tensor, x_shape: Sequence[int]) -> torch.Tensor:
    """Gather ``a[t]`` per batch element, shaped to broadcast against ``x_shape``."""
    out = a.gather(-1, t)
    return out.reshape(t.shape[0], *((1,) * (len(x_shape) - 1)))


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


_CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
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


class AlphaBlender(nn.Module):
    """Blend spatial and temporal paths: ``alpha * x_spatial + (1 - alpha) * x_temporal``.

    ``fixed`` uses ``alpha`` as is (a buffer); ``learned`` learns it through a
    sigmoid; ``learned_with_images`` does the same but uses alpha = 1 (spatial only)
    where ``image_only_indicator`` is set.
    """

    strategies = ("learned", "fixed", "learned_with_images")

    def __init__(
        self,
        alpha: float,
        merge_strategy: str = "learned_with_images",
        rearrange_pattern: str = "b t -> (b t) 1 1",
    ):
        super().__init__()
        if merge_strategy not in self.strategies:
            raise ValueError(
                f"unknown merge_strategy {merge_strategy!r}; expected one of "
                f"{', '.join(self.strategies)}"
            )
        self.merge_strategy = merge_strategy
        self.rearrange_pattern = rearrange_pattern
        if merge_strategy == "fixed":
            self.register_buffer("mix_factor", torch.tensor([float(alpha)]))
        else:
            self.register_parameter("mix_factor", nn.Parameter(torch.tensor([float(alpha)])))

    def get_alpha(self, image_only_indicator: torch.Tensor | None) -> torch.Tensor:
        if self.merge_strategy == "fixed":
            return self.mix_factor
        if self.merge_strategy == "learned":
            return torch.sigmoid(self.mix_factor)
        if image_only_indicator is None:
            raise ValueError("merge_strategy 'learned_with_images' needs image_only_indicator")
        alpha = torch.where(
            image_only_indicator.bool(),
            torch.ones(1, 1, device=image_only_indicator.device),
            rearrange(torch.sigmoid(self.mix_factor), "... -> ... 1"),
        )
        return rearrange(alpha, self.rearrange_pattern)

    def forward(
        self,
        x_spatial: torch.Tensor,
        x_temporal: torch.Tensor,
        image_only_indicator: torch.Tensor | None = None,
    ) -> torch.Tensor:
        alpha = self.get_alpha(image_only_indicator).to(x_spatial.dtype)
        return alpha * x_spatial + (1.0 - alpha) * x_temporal
