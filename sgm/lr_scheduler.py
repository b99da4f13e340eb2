"""Learning-rate multipliers for ``torch.optim.lr_scheduler.LambdaLR`` (called per step)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)


def _warm_up(n: float, steps: float, start: float, peak: float) -> float:
    return (peak - start) / steps * n + start


def _cosine(t: float, low: float, high: float) -> float:
    return low + 0.5 * (high - low) * (1.0 + math.cos(min(t, 1.0) * math.pi))


class LambdaWarmUpCosineScheduler:
    """Linear warm-up from ``lr_start`` to ``lr_max``, then cosine decay to ``lr_min``."""

    def __init__(
        self,
        warm_up_steps: int,
        lr_min: float,
        lr_max: float,
        lr_start: float,
        max_decay_steps: int,
        verbosity_interval: int = 0,
    ):
        if max_decay_steps <= warm_up_steps:
            raise ValueError(
                f"max_decay_steps ({max_decay_steps}) must exceed warm_up_steps ({warm_up_steps})"
            )
        self.lr_warm_up_steps = warm_up_steps
        self.lr_start = lr_start
        self.lr_min = lr_min
        self.lr_max = lr_max
        self.lr_max_decay_steps = max_decay_steps
        self.last_lr = 0.0
        self.verbosity_interval = verbosity_interval

    def schedule(self, n: int, **kwargs) -> float:
        """Multiplier at step ``n``."""
        if n < self.lr_warm_up_steps:
            lr = _warm_up(n, self.lr_warm_up_steps, self.lr_start, self.lr_max)
        else:
            t = (n - self.lr_warm_up_steps) / (self.lr_max_decay_steps - self.lr_warm_up_steps)
            lr = _cosine(t, self.lr_min, self.lr_max)
        if self.verbosity_interval > 0 and n % self.verbosity_interval == 0:
            logger.info("step %d: lr multiplier %.3e", n, lr)
        self.last_lr = lr
        return lr

    def __call__(self, n: int, **kwargs) -> float:
        return self.schedule(n, **kwargs)


class LambdaWarmUpCosineScheduler2:
    """Repeated cycles, each a linear warm-up ``f_start -> f_max`` then cosine to ``f_min``.

    Every argument but ``verbosity_interval`` is a list with one entry per cycle;
    steps past the last cycle keep using the last cycle.
    """

    def __init__(
        self,
        warm_up_steps: Sequence[int],
        f_min: Sequence[float],
        f_max: Sequence[float],
        f_start: Sequence[float],
        cycle_lengths: Sequence[float],
        verbosity_interval: int = 0,
    ):
        lists = dict(
            warm_up_steps=warm_up_steps,
            f_min=f_min,
            f_max=f_max,
            f_start=f_start,
            cycle_lengths=cycle_lengths,
        )
        lengths = {name: len(value) for name, value in lists.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"scheduler lists must have equal lengths, got {lengths}")
        self.lr_warm_up_steps = list(warm_up_steps)
        self.f_start = list(f_start)
        self.f_min = list(f_min)
        self.f_max = list(f_max)
        self.cycle_lengths = list(cycle_lengths)
        self.cum_cycles = np.cumsum([0] + self.cycle_lengths)
        self.last_f = 0.0
        self.verbosity_interval = verbosity_interval

    def find_in_interval(self, n: int) -> int:
        """Index of the cycle that step ``n`` falls in."""
        for interval, end in enumerate(self.cum_cycles[1:]):
            if n <= end:
                return interval
        return len(self.cycle_lengths) - 1

    def _decay(self, cycle: int, n: float) -> float:
        t = (n - self.lr_warm_up_steps[cycle]) / (
            self.cycle_lengths[cycle] - self.lr_warm_up_steps[cycle]
        )
        return _cosine(t, self.f_min[cycle], self.f_max[cycle])

    def schedule(self, n: int, **kwargs) -> float:
        """Multiplier at step ``n``."""
        cycle = self.find_in_interval(n)
        n = n - self.cum_cycles[cycle]
        if n < self.lr_warm_up_steps[cycle]:
            f = _warm_up(n, self.lr_warm_up_steps[cycle], self.f_start[cycle], self.f_max[cycle])
        else:
            f = self._decay(cycle, n)
        if self.verbosity_interval > 0 and n % self.verbosity_interval == 0:
            logger.info("step %d (cycle %d): lr multiplier %.3e", n, cycle, f)
        self.last_f = float(f)
        return float(f)

    def __call__(self, n: int, **kwargs) -> float:
        return self.schedule(n, **kwargs)


class LambdaLinearScheduler(LambdaWarmUpCosineScheduler2):
    """As ``LambdaWarmUpCosineScheduler2`` with a linear decay ``f_max -> f_min`` per cycle."""

    def _decay(self, cycle: int, n: float) -> float:
        length = self.cycle_lengths[cycle]
        return self.f_min[cycle] + (self.f_max[cycle] - self.f_min[cycle]) * (length - n) / length
