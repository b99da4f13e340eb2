"""Sampling few-step distilled models: LCM (LCM-LoRA) and x0-predicting networks
(SDXL-Lightning's one-step model).

- :class:`LCMDiscretization`: the timesteps of Luo et al. (2023), "Latent Consistency
  Models": ``n`` of the ``original_inference_steps`` skipping timesteps
  ``k - 1, 2k - 1, ..., 999`` the model was distilled on, as diffusers' ``LCMScheduler``.
- :class:`LCMSampler`: multistep consistency sampling. Each step maps the state to the
  consistency function's estimate ``c_skip(t) z_t + c_out(t) x0(z_t, t)`` and, except
  at the last step, noises it again to the next level.
- :class:`X0Scaling`: denoiser preconditioning for networks that predict the clean
  sample (diffusers' ``prediction_type="sample"``).

Multi-step SDXL-Lightning checkpoints sample with ``EulerEDMSampler`` on
``LegacyDDPMDiscretization(timestep_spacing="trailing")``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ...errors import ConfigError
from ...util import append_dims
from ._sampler_base import BaseDiffusionSampler, StepResult
from .denoiser_scaling import DenoiserScaling, Scalings
from .discretizer import LegacyDDPMDiscretization


class X0Scaling(DenoiserScaling):
    """The network predicts the clean sample: ``D(x, sigma) = F(x / sqrt(1 + sigma^2),
    sigma)``; ``c_noise = sigma`` (a discrete denoiser turns it into the timestep)."""

    def __call__(self, sigma: torch.Tensor) -> Scalings:
        c_skip = torch.zeros_like(sigma)
        c_out = torch.ones_like(sigma)
        c_in = 1.0 / (sigma**2 + 1.0) ** 0.5
        c_noise = sigma.clone()
        return c_skip, c_out, c_in, c_noise


def lcm_timesteps(n: int, num_timesteps: int = 1000, original_steps: int = 50) -> np.ndarray:
    """``n`` descending LCM timesteps (diffusers' ``LCMScheduler.set_timesteps``)."""
    k = num_timesteps // original_steps
    origin = (np.arange(1, original_steps + 1) * k - 1)[::-1]
    if not 1 <= n <= len(origin):
        raise ValueError(f"LCM sampling takes 1 to {len(origin)} steps, got {n}")
    return origin[np.floor(np.linspace(0, len(origin), n, endpoint=False)).astype(np.int64)]


class LCMDiscretization(LegacyDDPMDiscretization):
    """Sigmas of the DDPM schedule at the LCM timesteps (see :func:`lcm_timesteps`)."""

    def __init__(self, original_inference_steps: int = 50, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.original_inference_steps = original_inference_steps

    def timesteps(self, n: int) -> np.ndarray:
        return lcm_timesteps(n, self.num_timesteps, self.original_inference_steps)

    def get_sigmas(self, n: int, device: torch.device | str | None = "cpu") -> torch.Tensor:
        abar = self.alphas_cumprod[self.timesteps(n)]
        ratio = torch.tensor((1 - abar) / abar, dtype=torch.float32, device=device)
        return ratio**0.5


class LCMSampler(BaseDiffusionSampler):
    """Multistep latent consistency sampling (diffusers' ``LCMScheduler.step``).

    Args:
        timestep_scaling: multiplies the timestep in the boundary conditions
            ``c_skip = s^2 / ((10 t)^2 + s^2)``, ``c_out = 10 t / sqrt((10 t)^2 + s^2)``.
        sigma_data: ``s`` above.

    The discretization must be a DDPM one (``LCMDiscretization`` by default in configs):
    the boundary conditions need each level's integer timestep. Use no classifier-free
    guidance (``IdentityGuider``): LCM models have the guidance distilled in.
    """

    def __init__(
        self, timestep_scaling: float = 10.0, sigma_data: float = 0.5, *args: Any, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        abar = getattr(self.discretization, "alphas_cumprod", None)
        if abar is None:
            raise ConfigError(
                f"LCMSampler needs a DDPM discretization (LCMDiscretization), got "
                f"{type(self.discretization).__name__}"
            )
        self.log_sigmas = np.log(((1 - abar) / abar) ** 0.5)
        self.timestep_scaling = timestep_scaling
        self.sigma_data = sigma_data

    def timestep(self, sigma: float) -> int:
        """The DDPM timestep whose sigma is nearest ``sigma``."""
        return int(np.abs(self.log_sigmas - np.log(sigma)).argmin())

    def boundary(self, t: int) -> tuple[float, float]:
        """``(c_skip, c_out)`` at timestep ``t``."""
        scaled = t * self.timestep_scaling
        c_skip = self.sigma_data**2 / (scaled**2 + self.sigma_data**2)
        c_out = scaled / (scaled**2 + self.sigma_data**2) ** 0.5
        return c_skip, c_out

    def loop_step(self, step, x, denoiser, cond, uc, state, **denoiser_kwargs) -> StepResult:
        sigma = step.sigma
        x0 = self.denoise(x, denoiser, sigma, cond, uc, **denoiser_kwargs)
        c_skip, c_out = self.boundary(self.timestep(float(step.schedule[step.i])))
        sample = x / append_dims((sigma**2 + 1.0) ** 0.5, x.ndim)  # the VP-form latent z_t
        denoised = c_out * x0 + c_skip * sample
        if step.final:
            return StepResult(denoised, x, denoised)
        noise = self.randn_like(x)
        return StepResult(denoised + append_dims(step.next_sigma, x.ndim) * noise, x, denoised)
