"""Preconditioned denoisers ``D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ...util import append_dims, instantiate_from_config
from .denoiser_scaling import DenoiserScaling
from .discretizer import Discretization


class Denoiser(nn.Module):
    """Turns a network into a denoiser with the scalings from ``scaling_config``."""

    def __init__(self, scaling_config: Mapping[str, Any]) -> None:
        super().__init__()
        self.scaling: DenoiserScaling = instantiate_from_config(scaling_config)

    def possibly_quantize_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        """Identity for continuous-time denoisers."""
        return sigma

    def possibly_quantize_c_noise(self, c_noise: torch.Tensor) -> torch.Tensor:
        """Identity for continuous-time denoisers."""
        return c_noise

    def forward(
        self,
        network: nn.Module,
        input: torch.Tensor,
        sigma: torch.Tensor,
        cond: Mapping[str, Any],
        **additional_model_inputs: Any,
    ) -> torch.Tensor:
        """Denoise ``input`` (B, ...) at per-sample noise levels ``sigma`` (B,)."""
        sigma = self.possibly_quantize_sigma(sigma)
        sigma_shape = sigma.shape
        sigma = append_dims(sigma, input.ndim)
        c_skip, c_out, c_in, c_noise = self.scaling(sigma)
        c_noise = self.possibly_quantize_c_noise(c_noise.reshape(sigma_shape))
        return (
            network(input * c_in, c_noise, cond, **additional_model_inputs) * c_out + input * c_skip
        )


class DiscreteDenoiser(Denoiser):
    """A denoiser for networks trained on ``num_idx`` discrete noise levels.

    Args:
        num_idx: number of discrete levels (1000 for the SD family).
        discretization_config: schedule giving the levels; stored ascending in the
            persistent buffer ``sigmas`` when ``flip`` is True.
        quantize_c_noise: pass the integer level index to the network as ``c_noise``.
    """

    def __init__(
        self,
        scaling_config: Mapping[str, Any],
        num_idx: int,
        discretization_config: Mapping[str, Any],
        do_append_zero: bool = False,
        quantize_c_noise: bool = True,
        flip: bool = True,
    ) -> None:
        super().__init__(scaling_config)
        self.discretization: Discretization = instantiate_from_config(discretization_config)
        sigmas = self.discretization(num_idx, do_append_zero=do_append_zero, flip=flip)
        self.register_buffer("sigmas", sigmas)
        self.quantize_c_noise = quantize_c_noise
        self.num_idx = num_idx

    def sigma_to_idx(self, sigma: torch.Tensor) -> torch.Tensor:
        """Index of the nearest table sigma for each entry of ``sigma``."""
        dists = sigma - self.sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape)

    def idx_to_sigma(self, idx: torch.Tensor | int) -> torch.Tensor:
        """Table sigma at ``idx``."""
        return self.sigmas[idx]

    def possibly_quantize_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        """Snap ``sigma`` to the nearest table entry."""
        return self.idx_to_sigma(self.sigma_to_idx(sigma))

    def possibly_quantize_c_noise(self, c_noise: torch.Tensor) -> torch.Tensor:
        """The level index if ``quantize_c_noise``, else ``c_noise`` unchanged."""
        if self.quantize_c_noise:
            return self.sigma_to_idx(c_noise)
        return c_noise
