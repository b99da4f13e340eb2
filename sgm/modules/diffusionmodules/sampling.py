"""Diffusion samplers: Euler/Heun (EDM), ancestral, DPM-Solver++ and linear multistep.

Every sampler is called as ``sampler(denoiser, x, cond, uc=None, num_steps=None,
generator=None)`` where ``x`` is unit Gaussian noise (it is scaled by
``sqrt(1 + sigma_0^2)`` first) and ``denoiser(x, sigma, cond)`` returns the denoised
estimate. Fresh noise comes from ``generator`` when given, else from the global torch
random stream, drawn in a fixed order so ``torch.manual_seed`` reproduces a sample.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch

from ...util import append_dims, default, instantiate_from_config
from .sampling_utils import (
    dpmpp_2m_step,
    dpmpp_2s_midpoint,
    dpmpp_2s_update,
    euler_step,
    get_ancestral_step,
    heun_correction,
    linear_multistep_coeff,
    to_d,
)

logger = logging.getLogger(__name__)

DEFAULT_GUIDER = {"target": "sgm.modules.diffusionmodules.guiders.IdentityGuider"}

Denoiser = Callable[..., torch.Tensor]
Cond = Mapping[str, Any]


class BaseDiffusionSampler:
    """Holds the discretization, the guider and the number of steps.

    Args:
        discretization_config: config of a ``Discretization`` giving the sigmas.
        num_steps: default number of network steps (``__call__`` may override it).
        guider_config: config of a guider (default: ``IdentityGuider``, no guidance).
        verbose: log the setup and show a progress bar.
        device: where the sigmas live; None follows the input ``x``.
    """

    def __init__(
        self,
        discretization_config: Mapping[str, Any],
        num_steps: int | None = None,
        guider_config: Mapping[str, Any] | None = None,
        verbose: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        self.num_steps = num_steps
        self.discretization = instantiate_from_config(discretization_config)
        self.guider = instantiate_from_config(default(guider_config, DEFAULT_GUIDER))
        self.verbose = verbose
        self.device = device
        self._generator: torch.Generator | None = None

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        """Standard normal noise like ``x`` from the active generator (else global)."""
        if self._generator is None:
            return torch.randn_like(x)
        return torch.randn(
            x.shape, generator=self._generator, dtype=x.dtype, device=x.device
        )

    @contextlib.contextmanager
    def generator_scope(self, generator: torch.Generator | None) -> Iterator[None]:
        """Draw noise from ``generator`` inside the block, then restore the source."""
        previous = self._generator
        self._generator = generator
        try:
            yield
        finally:
            self._generator = previous

    def prepare_sampling_loop(
        self,
        x: torch.Tensor,
        cond: Cond,
        uc: Cond | None = None,
        num_steps: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, Cond, Cond]:
        """Sigmas for the run and the start ``x sqrt(1 + sigma_0^2)`` (a new tensor)."""
        num_steps = self.num_steps if num_steps is None else num_steps
        if num_steps is None:
            raise ValueError(
                f"{type(self).__name__}: num_steps is None; set it in the sampler "
                "config or pass num_steps= when calling the sampler"
            )
        device = x.device if self.device is None else self.device
        sigmas = self.discretization(num_steps, device=device)
        uc = default(uc, cond)
        x = x * torch.sqrt(1.0 + sigmas[0] ** 2.0)
        num_sigmas = len(sigmas)
        s_in = x.new_ones([x.shape[0]])
        return x, s_in, sigmas, num_sigmas, cond, uc

    def denoise(
        self,
        x: torch.Tensor,
        denoiser: Denoiser,
        sigma: torch.Tensor,
        cond: Cond,
        uc: Cond,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Guided denoised estimate at ``sigma``; ``kwargs`` go to the denoiser."""
        denoised = denoiser(*self.guider.prepare_inputs(x, sigma, cond, uc), **kwargs)
        return self.guider(denoised, sigma)

    def get_sigma_gen(self, num_sigmas: int) -> Iterable[int]:
        """Step indices ``0 .. num_sigmas - 2`` (with a progress bar when verbose)."""
        steps: Iterable[int] = range(num_sigmas - 1)
        if self.verbose:
            from tqdm import tqdm

            logger.info(
                "Sampler: %s, discretization: %s, guider: %s",
                type(self).__name__,
                type(self.discretization).__name__,
                type(self.guider).__name__,
            )
            steps = tqdm(
                steps,
                total=num_sigmas - 1,
                desc=f"Sampling with {type(self).__name__} for {num_sigmas - 1} steps",
            )
        return steps


class SingleStepDiffusionSampler(BaseDiffusionSampler):
    """A sampler whose update uses only the current state."""

    def sampler_step(self, sigma, next_sigma, denoiser, x, cond, uc, *args, **kwargs):
        """One step ``sigma -> next_sigma``."""
        raise NotImplementedError

    def euler_step(
        self, x: torch.Tensor, d: torch.Tensor, dt: torch.Tensor
    ) -> torch.Tensor:
        """``x + dt d``."""
        return euler_step(x, d, dt)

    def _step_args(self, sigma: torch.Tensor, num_sigmas: int) -> tuple:
        """Extra positional arguments of :meth:`sampler_step` for the step at ``sigma``."""
        return ()

    def __call__(
        self,
        denoiser: Denoiser,
        x: torch.Tensor,
        cond: Cond,
        uc: Cond | None = None,
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample from unit noise ``x``; returns a new tensor."""
        with self.generator_scope(generator):
            x, s_in, sigmas, num_sigmas, cond, uc = self.prepare_sampling_loop(
                x, cond, uc, num_steps
            )
            for i in self.get_sigma_gen(num_sigmas):
                extra = self._step_args(sigmas[i], num_sigmas)
                x = self.sampler_step(
                    s_in * sigmas[i], s_in * sigmas[i + 1], denoiser, x, cond, uc, *extra
                )
        return x


class EDMSampler(SingleStepDiffusionSampler):
    """Karras et al. (2022), Algorithm 2: deterministic steps with optional churn.

    Args:
        s_churn: total churn; each step inside ``[s_tmin, s_tmax]`` raises sigma by
            ``gamma = min(s_churn / (num_sigmas - 1), sqrt(2) - 1)`` with fresh noise.
        s_tmin, s_tmax: sigma range where churn applies.
        s_noise: std multiplier of the churn noise.
    """

    def __init__(
        self,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.s_churn = s_churn
        self.s_tmin = s_tmin
        self.s_tmax = s_tmax
        self.s_noise = s_noise

    def churn_gamma(self, sigma: torch.Tensor | float, num_sigmas: int) -> float:
        """Karras et al. (2022), eq. 7 gamma for a step starting at ``sigma``."""
        if self.s_tmin <= float(sigma) <= self.s_tmax:
            return min(self.s_churn / (num_sigmas - 1), 2**0.5 - 1)
        return 0.0

    def _step_args(self, sigma: torch.Tensor, num_sigmas: int) -> tuple[float]:
        """The churn ``gamma`` of the step."""
        return (self.churn_gamma(sigma, num_sigmas),)

    def sampler_step(self, sigma, next_sigma, denoiser, x, cond, uc=None, gamma=0.0):
        """Churn to ``sigma_hat = sigma (1 + gamma)``, then an Euler (or Heun) step."""
        sigma_hat = sigma * (gamma + 1.0)
        if gamma > 0:
            eps = self.randn_like(x) * self.s_noise
            x = x + eps * append_dims(sigma_hat**2 - sigma**2, x.ndim) ** 0.5
        denoised = self.denoise(x, denoiser, sigma_hat, cond, uc)
        d = to_d(x, sigma_hat, denoised)
        dt = append_dims(next_sigma - sigma_hat, x.ndim)
        x_euler = self.euler_step(x, d, dt)
        return self.possible_correction_step(
            x_euler, x, d, dt, next_sigma, denoiser, cond, uc
        )

    def possible_correction_step(
        self, euler_step, x, d, dt, next_sigma, denoiser, cond, uc
    ) -> torch.Tensor:
        """No correction: keep the Euler step."""
        return euler_step


class EulerEDMSampler(EDMSampler):
    """Karras et al. (2022), Algorithm 2 with Euler steps."""


class HeunEDMSampler(EDMSampler):
    """Karras et al. (2022), Algorithm 2 with Heun steps (Euler into sigma = 0)."""

    def possible_correction_step(
        self, euler_step, x, d, dt, next_sigma, denoiser, cond, uc
    ) -> torch.Tensor:
        """Heun correction where ``next_sigma > 0``."""
        if torch.sum(next_sigma) < 1e-14:
            # Every target level is 0: skip the second network evaluation.
            return euler_step
        denoised = self.denoise(euler_step, denoiser, next_sigma, cond, uc)
        d_new = to_d(euler_step, next_sigma, denoised)
        x_heun = heun_correction(x, d, d_new, dt)
        return torch.where(append_dims(next_sigma, x.ndim) > 0.0, x_heun, euler_step)


class AncestralSampler(SingleStepDiffusionSampler):
    """Ancestral sampling: a step to ``sigma_down`` plus fresh noise ``sigma_up``.

    Args:
        eta: noise amount (0: deterministic, 1: full ancestral step).
        s_noise: std multiplier of the added noise.

    ``noise_sampler(x)`` gives the added noise; it defaults to :meth:`randn_like`
    and may be replaced by any callable returning noise shaped like ``x``.
    """

    def __init__(
        self, eta: float = 1.0, s_noise: float = 1.0, *args: Any, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.eta = eta
        self.s_noise = s_noise
        self.noise_sampler: Callable[[torch.Tensor], torch.Tensor] = self.randn_like

    def ancestral_euler_step(self, x, denoised, sigma, sigma_down) -> torch.Tensor:
        """Euler step of the probability-flow ODE from ``sigma`` to ``sigma_down``."""
        d = to_d(x, sigma, denoised)
        dt = append_dims(sigma_down - sigma, x.ndim)
        return self.euler_step(x, d, dt)

    def ancestral_step(self, x, sigma, next_sigma, sigma_up) -> torch.Tensor:
        """Add ``s_noise * sigma_up`` std noise where ``next_sigma > 0``."""
        if not torch.is_tensor(sigma_up):
            sigma_up = torch.full_like(next_sigma, sigma_up)
        # Drawn even where discarded: the random stream advances once per step.
        noisy = x + self.noise_sampler(x) * self.s_noise * append_dims(sigma_up, x.ndim)
        return torch.where(append_dims(next_sigma, x.ndim) > 0.0, noisy, x)


class EulerAncestralSampler(AncestralSampler):
    """Ancestral sampling with Euler steps."""

    def sampler_step(self, sigma, next_sigma, denoiser, x, cond, uc) -> torch.Tensor:
        """Euler step to ``sigma_down``, then noise up to ``next_sigma``."""
        sigma_down, sigma_up = get_ancestral_step(sigma, next_sigma, eta=self.eta)
        denoised = self.denoise(x, denoiser, sigma, cond, uc)
        x = self.ancestral_euler_step(x, denoised, sigma, sigma_down)
        return self.ancestral_step(x, sigma, next_sigma, sigma_up)


class DPMPP2SAncestralSampler(AncestralSampler):
    """Lu et al. (2022): ancestral DPM-Solver++(2S) (two network calls per step)."""

    def sampler_step(
        self, sigma, next_sigma, denoiser, x, cond, uc=None, **kwargs
    ) -> torch.Tensor:
        """DPM-Solver++(2S) step to ``sigma_down`` (Euler into 0), then noise up."""
        sigma_down, sigma_up = get_ancestral_step(sigma, next_sigma, eta=self.eta)
        denoised = self.denoise(x, denoiser, sigma, cond, uc)
        x_euler = self.ancestral_euler_step(x, denoised, sigma, sigma_down)
        if torch.sum(sigma_down) < 1e-14:
            # Every target level is 0: skip the second network evaluation.
            x = x_euler
        else:
            x_mid, sigma_mid = dpmpp_2s_midpoint(x, denoised, sigma, sigma_down)
            denoised_mid = self.denoise(x_mid, denoiser, sigma_mid, cond, uc)
            x_dpmpp2s = dpmpp_2s_update(x, denoised_mid, sigma, sigma_down)
            x = torch.where(append_dims(sigma_down, x.ndim) > 0.0, x_dpmpp2s, x_euler)
        return self.ancestral_step(x, sigma, next_sigma, sigma_up)


class LinearMultistepSampler(BaseDiffusionSampler):
    """Linear multistep (Adams-Bashforth in sigma) of order up to ``order``."""

    def __init__(self, order: int = 4, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.order = order

    def __call__(
        self,
        denoiser: Denoiser,
        x: torch.Tensor,
        cond: Cond,
        uc: Cond | None = None,
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Sample from unit noise ``x``; ``kwargs`` go to the denoiser."""
        x, s_in, sigmas, num_sigmas, cond, uc = self.prepare_sampling_loop(
            x, cond, uc, num_steps
        )
        ds: list[torch.Tensor] = []
        sigmas_cpu = sigmas.detach().cpu().numpy()
        for i in self.get_sigma_gen(num_sigmas):
            sigma = s_in * sigmas[i]
            denoised = self.denoise(x, denoiser, sigma, cond, uc, **kwargs)
            ds.append(to_d(x, sigma, denoised))
            if len(ds) > self.order:
                ds.pop(0)
            cur_order = min(i + 1, self.order)
            coeffs = [
                linear_multistep_coeff(cur_order, sigmas_cpu, i, j)
                for j in range(cur_order)
            ]
            x = x + sum(
                coeff * d for coeff, d in zip(coeffs, reversed(ds), strict=True)
            )
        return x


class DPMPP2MSampler(BaseDiffusionSampler):
    """Lu et al. (2022): DPM-Solver++(2M), second-order multistep."""

    def sampler_step(
        self,
        old_denoised,
        previous_sigma,
        sigma,
        next_sigma,
        denoiser,
        x,
        cond,
        uc=None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step; returns the new ``x`` and this step's denoised estimate."""
        denoised = self.denoise(x, denoiser, sigma, cond, uc)
        x = dpmpp_2m_step(x, denoised, old_denoised, previous_sigma, sigma, next_sigma)
        return x, denoised

    def __call__(
        self,
        denoiser: Denoiser,
        x: torch.Tensor,
        cond: Cond,
        uc: Cond | None = None,
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Sample from unit noise ``x`` (deterministic); returns a new tensor."""
        x, s_in, sigmas, num_sigmas, cond, uc = self.prepare_sampling_loop(
            x, cond, uc, num_steps
        )
        old_denoised = None
        for i in self.get_sigma_gen(num_sigmas):
            x, old_denoised = self.sampler_step(
                old_denoised,
                None if i == 0 else s_in * sigmas[i - 1],
                s_in * sigmas[i],
                s_in * sigmas[i + 1],
                denoiser,
                x,
                cond,
                uc=uc,
            )
        return x
