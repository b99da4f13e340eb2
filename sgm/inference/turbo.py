"""Few-step sampling for the adversarially distilled models (SDXL-Turbo, SD-Turbo).

The Turbo models take 1 to 4 Euler-ancestral steps at fixed levels of the 1000-step
DDPM schedule (sigma indices 0, 100, 200, 300, then 0 noise), without classifier-free
guidance. Noise comes from NumPy's ``RandomState``, seeded per draw, so a seed gives
the same picture on every device.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..modules.diffusionmodules.sampling import EulerAncestralSampler

MAX_TURBO_STEPS = 4
TURBO_SIGMA_INDICES = (0, 100, 200, 300)
SCHEDULE_STEPS = 1000
LEGACY_DDPM = {"target": "sgm.modules.diffusionmodules.discretizer.LegacyDDPMDiscretization"}


def check_turbo_steps(n_steps: int) -> int:
    """``n_steps`` if it is 1..4, else an ``InputError``."""
    if isinstance(n_steps, bool) or int(n_steps) != n_steps or not 1 <= n_steps <= 4:
        raise InputError(f"Turbo models sample in 1 to {MAX_TURBO_STEPS} steps, got {n_steps!r}")
    return int(n_steps)


def seeded_randn(
    shape: Sequence[int], seed: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Standard normal float32 noise of ``shape`` from ``numpy.random.RandomState(seed)``."""
    values = np.random.RandomState(int(seed)).randn(*[int(s) for s in shape])
    return torch.from_numpy(values).to(device=device, dtype=torch.float32)


class SeededNoise:
    """Noise source for ancestral steps: each call first increments the seed, then draws
    :func:`seeded_randn` noise shaped like its argument (``seed + 1``, ``seed + 2``, ...)."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.seed += 1
        return seeded_randn(x.shape, self.seed, x.device).to(x.dtype)


class SubstepSampler(EulerAncestralSampler):
    """Euler ancestral on a subset of a long schedule's sigmas, without guidance.

    The discretization is evaluated at ``num_steps`` (1000 for Turbo) and only the levels
    at ``steps_subset[:n_sample_steps]`` plus the final zero are visited. The
    unconditional input is ignored (``uc = cond``).
    """

    def __init__(self, n_sample_steps: int = 1, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.n_sample_steps = n_sample_steps
        self.steps_subset = [*TURBO_SIGMA_INDICES, SCHEDULE_STEPS]

    def sigma_indices(self) -> list[int]:
        """Indices into the full descending schedule (zero appended) that are visited."""
        if not 1 <= self.n_sample_steps < len(self.steps_subset):
            raise InputError(
                f"SubstepSampler: n_sample_steps must be 1..{len(self.steps_subset) - 1}, "
                f"got {self.n_sample_steps}"
            )
        return self.steps_subset[: self.n_sample_steps] + self.steps_subset[-1:]

    def prepare_sampling_loop(self, x, cond, uc=None, num_steps=None):
        num_steps = self.num_steps if num_steps is None else num_steps
        device = x.device if self.device is None else self.device
        sigmas = self.discretization(num_steps, device=device)[self.sigma_indices()]
        x = x * torch.sqrt(1.0 + sigmas[0] ** 2.0)
        s_in = x.new_ones([x.shape[0]])
        return x, s_in, sigmas, len(sigmas), cond, cond


def turbo_sampler(n_steps: int, seed: int, verbose: bool = True) -> SubstepSampler:
    """The Turbo sampler: ``n_steps`` (1..4) ancestral steps (eta 1), noise from ``seed``."""
    sampler = SubstepSampler(
        n_sample_steps=check_turbo_steps(n_steps),
        num_steps=SCHEDULE_STEPS,
        eta=1.0,
        discretization_config=LEGACY_DDPM,
        verbose=verbose,
    )
    sampler.noise_sampler = SeededNoise(seed)
    return sampler


def sample_turbo(
    model: Any,
    prompt: str,
    n_steps: int,
    height: int,
    width: int,
    seed: int,
    num_samples: int = 1,
    channels: int = 4,
    factor: int = 8,
    extra_values: Mapping[str, Any] | None = None,
    filter: Callable[[torch.Tensor], torch.Tensor] | None = None,
    return_latents: bool = False,
    verbose: bool = True,
    callback: Callable[[dict], Any] | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``num_samples`` Turbo images ``(N, 3, H, W)`` in [0, 1] for ``prompt``.

    Start noise is ``seeded_randn((N, C, H/F, W/F), seed)``; the ancestral noise comes
    from ``SeededNoise(seed)``. ``extra_values`` adds or overrides conditioning values;
    ``callback`` receives the sampler's per-step dictionary.
    """
    from .helpers import do_sample, model_device

    value_dict = {
        "prompt": prompt,
        "negative_prompt": "",
        "orig_width": width,
        "orig_height": height,
        "target_width": width,
        "target_height": height,
        "crop_coords_top": 0,
        "crop_coords_left": 0,
        "aesthetic_score": 6.0,
        "negative_aesthetic_score": 2.5,
        **(extra_values or {}),
    }
    shape = (num_samples, channels, height // factor, width // factor)
    noise = seeded_randn(shape, seed, model_device(model))
    return do_sample(
        model,
        turbo_sampler(n_steps, seed, verbose),
        value_dict,
        num_samples,
        height,
        width,
        channels,
        factor,
        return_latents=return_latents,
        filter=filter,
        noise=noise,
        callback=callback,
    )
