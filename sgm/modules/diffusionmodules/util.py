"""Diffusion schedule helpers: beta schedules, per-timestep gathers.

The layer primitives of :mod:`sgm.modules.layers` and the blending of
:mod:`sgm.modules.blending` are re-exported here under their original path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ...util import mean_flat  # noqa: F401  (re-exported: original path)
from ..blending import AlphaBlender, get_alpha  # noqa: F401  (re-exported: original path)
from ..layers import (  # noqa: F401  (re-exported: original path)
    GroupNorm32,
    SiLU,
    avg_pool_nd,
    checkpoint,
    conv_nd,
    linear,
    normalization,
    scale_module,
    timestep_embedding,
    zero_module,
)


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
