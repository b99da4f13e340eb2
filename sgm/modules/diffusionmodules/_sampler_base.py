"""The sampling loop shared by every sampler, and what one step sees and returns.

:class:`BaseDiffusionSampler` holds the discretization, the guider and the number of
steps; its ``__call__`` is the one loop. It reads the schedule to the host once, before
the first step, decides there which steps land on sigma = 0, and then calls the
sampler's :meth:`~BaseDiffusionSampler.loop_step` for each step without waiting for the
device. Public names are re-exported by :mod:`sgm.modules.diffusionmodules.sampling`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ...util import default, instantiate_from_config
from .. import run_cache, sampling_step
from . import tgate

logger = logging.getLogger(__name__)

DEFAULT_GUIDER = {"target": "sgm.modules.diffusionmodules.guiders.IdentityGuider"}
ZERO_SIGMA = 1e-14

Denoiser = Callable[..., torch.Tensor]
Cond = Mapping[str, Any]
Callback = Callable[[dict[str, Any]], Any]


@dataclass(frozen=True)
class Step:
    """One step of the loop: its levels on the device and what the host knows of them.

    ``sigma``, ``next_sigma`` and ``prev_sigma`` are per-sample levels ``(B,)``;
    ``schedule`` is the host copy of every level of the run; ``final`` says that the
    step lands on sigma = 0 (decided on the host before the loop).
    """

    i: int
    sigma: torch.Tensor
    next_sigma: torch.Tensor
    prev_sigma: torch.Tensor | None
    schedule: np.ndarray
    final: bool

    @property
    def num_sigmas(self) -> int:
        return len(self.schedule)


@dataclass(frozen=True)
class StepInputs:
    """What a step sees when it changes from step to step (SV4D's dense windows): the
    denoiser, the conditioning, and ``order``, the rows of the run's state the step
    sees, in that order (None: all, as they are). The step's result goes back to the
    same rows. Meant for samplers that keep no state between steps."""

    denoiser: Denoiser
    cond: Cond
    uc: Cond
    order: torch.Tensor | None = None


@dataclass(frozen=True)
class StepResult:
    """A step's new state, the state its network saw, the estimate and the churn."""

    x: torch.Tensor
    x_seen: torch.Tensor
    denoised: torch.Tensor
    gamma: float = 0.0


class BaseDiffusionSampler:
    """Holds the discretization, the guider and the number of steps; runs the loop.

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
        return torch.randn(x.shape, generator=self._generator, dtype=x.dtype, device=x.device)

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
        gate = None if torch.compiler.is_compiling() else tgate.active()
        if gate is not None:  # T-GATE: one unconditional pass per step after the gate
            return tgate.denoise(gate, self.guider, x, denoiser, sigma, cond, uc, **kwargs)
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

    def final_steps(self, schedule: np.ndarray) -> list[bool]:
        """Per step, on the host: does it land on sigma = 0?"""
        return [bool(s < ZERO_SIGMA) for s in schedule[1:]]

    def loop_step(
        self,
        step: Step,
        x: torch.Tensor,
        denoiser: Denoiser,
        cond: Cond,
        uc: Cond,
        state: dict[str, Any],
        **denoiser_kwargs: Any,
    ) -> StepResult:
        """One step of the loop; ``state`` carries solver memory across the run."""
        raise NotImplementedError

    def __call__(
        self,
        denoiser: Denoiser,
        x: torch.Tensor,
        cond: Cond,
        uc: Cond | None = None,
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
        callback: Callback | None = None,
        **denoiser_kwargs: Any,
    ) -> torch.Tensor:
        """Sample from unit noise ``x``; returns a new tensor."""
        return self._loop(
            denoiser, x, cond, uc, num_steps, generator, callback, None, denoiser_kwargs
        )

    def sample_steps(
        self,
        step_inputs: Callable[[int], StepInputs],
        x: torch.Tensor,
        cond: Cond,
        uc: Cond | None = None,
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
        callback: Callback | None = None,
        **denoiser_kwargs: Any,
    ) -> torch.Tensor:
        """:meth:`__call__`'s loop where ``step_inputs(i)`` gives step ``i``'s denoiser and
        conditioning and may reorder the rows that step sees (:class:`StepInputs`)."""
        first = step_inputs(0)
        return self._loop(
            first.denoiser,
            x,
            cond,
            uc,
            num_steps,
            generator,
            callback,
            step_inputs,
            denoiser_kwargs,
        )

    def _loop(
        self, denoiser, x, cond, uc, num_steps, generator, callback, step_inputs, denoiser_kwargs
    ):
        with self.generator_scope(generator), run_cache.sampling_run():
            x, s_in, sigmas, num_sigmas, cond, uc = self.prepare_sampling_loop(
                x, cond, uc, num_steps
            )
            schedule = sigmas.detach().cpu().numpy()  # the one host read of the run
            final = self.final_steps(schedule)
            state: dict[str, Any] = {}
            for i in self.get_sigma_gen(num_sigmas):
                step = Step(
                    i,
                    s_in * sigmas[i],
                    s_in * sigmas[i + 1],
                    None if i == 0 else s_in * sigmas[i - 1],
                    schedule,
                    final[i],
                )
                with sampling_step.at(i, num_sigmas - 1):
                    if step_inputs is None:
                        out = self.loop_step(step, x, denoiser, cond, uc, state, **denoiser_kwargs)
                        x = out.x
                    else:
                        inputs = step_inputs(i)
                        out, x = self._reordered_step(step, x, inputs, state, denoiser_kwargs)
                if callback is not None:
                    sigma_hat = sigmas[i] * (out.gamma + 1)
                    callback(
                        {
                            "i": i,
                            "sigma": sigmas[i],
                            "sigma_hat": sigma_hat,
                            "x": out.x_seen,
                            "denoised": out.denoised,
                        }
                    )
        return x

    def _reordered_step(
        self, step: Step, x: torch.Tensor, inputs: StepInputs, state: dict, kwargs: dict
    ) -> tuple[StepResult, torch.Tensor]:
        seen = x if inputs.order is None else x[inputs.order]
        out = self.loop_step(step, seen, inputs.denoiser, inputs.cond, inputs.uc, state, **kwargs)
        if inputs.order is None:
            return out, out.x
        x = x.clone()
        x[inputs.order] = out.x
        return out, x
