"""DeepCache (Ma et al., 2023): reuse a UNet's deep features between sampling steps.

On a *full* step the network runs whole and keeps the feature that enters its output
block ``N - 1 - branch`` (``N`` blocks on each side): everything below the skip branch
``branch``. On the other steps it runs only the shallow part: input blocks
``0 .. branch`` and output blocks ``N - 1 - branch .. N - 1``, starting from the kept
feature. Branch 0 is the shallowest (the input convolution and the last output block);
the flat ``input_blocks`` / ``output_blocks`` of ``UNetModel`` and ``VideoUNet`` number the
branches as the ``deepcache`` package's ``cache_branch_id`` does for diffusers' UNets.

Which steps are full: every ``interval``-th step from the first (uniform), or the
paper's non-uniform 1:N schedule, ``ceil(T / interval)`` full steps placed by a power
law around a ``center`` step (denser there: :meth:`DeepCache.full_steps`). The step comes
from the samplers' loop (``sgm.modules.sampling_step``); a network called outside a
sampling loop always runs whole. Nothing changes unless a run enables it::

    with deepcache.enabled(DeepCache(interval=3)):
        samples = sampler(denoiser, noise, cond, uc)
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ...errors import InputError
from .. import sampling_step
from ..run_scope import RunScope
from ._unet_blocks import call_layer


@dataclass(frozen=True)
class DeepCache:
    """DeepCache settings.

    Args:
        interval: N of the 1:N schedule (one full step in N; 1 makes every step full).
        branch: skip branch whose deep feature is reused (0: the shallowest).
        uniform: full steps every ``interval`` steps; False: the non-uniform schedule.
        center: non-uniform only: the step the full steps crowd around (default: 30%
            of the steps).
        power: non-uniform only: the power law's exponent (> 1).
    """

    interval: int
    branch: int = 0
    uniform: bool = True
    center: int | None = None
    power: float = 1.4

    def __post_init__(self) -> None:
        for name in ("interval", "branch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise InputError(f"deepcache {name} must be an integer, got {value!r}")
        if self.interval < 1:
            raise InputError(f"deepcache interval must be at least 1, got {self.interval}")
        if self.branch < 0:
            raise InputError(f"deepcache branch must be 0 or more, got {self.branch}")
        if not (math.isfinite(self.power) and self.power > 1):
            raise InputError(f"deepcache power must be a finite number above 1, got {self.power}")

    def full_steps(self, num_steps: int) -> tuple[int, ...]:
        """The steps (of ``num_steps``) on which the network runs whole."""
        return _full_steps(self, int(num_steps))

    def check_network(self, network: Any) -> None:
        """``InputError`` unless ``network`` is a UNet deep enough for ``branch``."""
        blocks = getattr(network, "input_blocks", None)
        if blocks is None or not hasattr(network, "output_blocks"):
            raise InputError(
                f"deepcache needs a UNet with input and output blocks; "
                f"{type(network).__name__} has none"
            )
        if self.branch > len(blocks) - 2:
            raise InputError(
                f"deepcache branch {self.branch} is too deep for {type(network).__name__}: "
                f"its branches are 0 .. {len(blocks) - 2}"
            )


@functools.lru_cache(maxsize=64)
def _full_steps(options: DeepCache, num_steps: int) -> tuple[int, ...]:
    if options.interval == 1 or num_steps <= 1:
        return tuple(range(num_steps))
    if options.uniform:
        return tuple(range(0, num_steps, options.interval))
    count = math.ceil(num_steps / options.interval)
    center = round(0.3 * num_steps) if options.center is None else int(options.center)
    if not 0 <= center < num_steps:
        raise InputError(f"deepcache center {center} is outside the {num_steps} steps")
    return _power_law_steps(num_steps, count, center, options.power)


def _power_law_steps(num_steps: int, count: int, center: int, power: float) -> tuple[int, ...]:
    """``count`` distinct steps: 0 and ``center + sgn(l) |l|^p`` for ``l`` evenly spaced
    from ``-center^(1/p)`` to ``(T - center)^(1/p)`` (the last point left out), lowering
    ``p`` by 0.02 until rounding leaves ``count`` distinct steps."""
    p = power
    while p > 1:
        ends = -(center ** (1 / p)), (num_steps - center) ** (1 / p)
        points = np.linspace(*ends, count + 1)[:-1]
        steps = {0} | {center + int(np.sign(v) * np.floor(abs(v) ** p)) for v in points}
        steps = sorted(s for s in steps if 0 <= s < num_steps)
        if len(steps) == count:
            return tuple(steps)
        p -= 0.02
    raise InputError(
        f"deepcache: no non-uniform schedule of {count} full steps in {num_steps} around "
        f"step {center}; lower the interval or move the center"
    )


@dataclass
class _Run:
    options: DeepCache
    features: dict[tuple, torch.Tensor] = field(default_factory=dict)
    checked: set[int] = field(default_factory=set)


_SCOPE: RunScope[_Run] = RunScope("sgm_deepcache", _Run, clear=lambda run: run.features.clear())


def enabled(options: DeepCache | None) -> contextlib.AbstractContextManager[None]:
    """UNets called inside the block reuse their deep features as ``options`` say (None:
    no reuse). The kept features are dropped on leaving."""
    return _SCOPE.enabled(options)


def active() -> _Run | None:
    """The DeepCache run in effect, if any."""
    return _SCOPE.active()


def forward(
    network: Any, run: _Run, x: torch.Tensor, emb: torch.Tensor, context: Any, extras: dict
) -> torch.Tensor:
    """``network``'s blocks from the embedded ``emb``: whole on a full step (keeping the
    deep feature), else only the shallow branch from the kept feature."""
    if id(network) not in run.checked:
        run.options.check_network(network)
        run.checked.add(id(network))
    n, branch = len(network.input_blocks), run.options.branch
    enter = n - 1 - branch  # the first output block of the shallow branch
    key = (id(network), tuple(x.shape), x.dtype, x.device)
    step = sampling_step.current()
    kept = run.features.get(key)
    full = kept is None or step is None or step[0] in run.options.full_steps(step[1])
    skips = []
    h = x
    for module in network.input_blocks if full else network.input_blocks[: branch + 1]:
        h = module(h, emb, context, **extras)
        skips.append(h)
    if full:
        h = network.middle_block(h, emb, context, **extras)
        h = _output_blocks(network.output_blocks[:enter], h, skips, emb, context, extras)
        run.features[key] = h
    else:
        h = kept
    h = _output_blocks(network.output_blocks[enter:], h, skips, emb, context, extras)
    return network.out(h.type(x.dtype))


def _output_blocks(modules, h, skips, emb, context, extras) -> torch.Tensor:
    """The UNet skeleton's output loop over ``modules`` (each joins the last skip)."""
    for module in modules:
        h = torch.cat([h, skips.pop()], dim=1)
        for layer in module:
            h = call_layer(layer, h, emb, context, **extras)
    return h
