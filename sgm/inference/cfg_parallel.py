"""Guidance-parallel sampling: the unconditional and the conditional half of a guider's
batch run on two processes, which exchange their denoiser outputs at every step.

Both processes of a pair run the same sampler from the same seed; :class:`SplitGuider`
hands the denoiser only this process's half of the guider's inputs (rank ``2p``: the
unconditional rows, rank ``2p + 1``: the conditional ones), gathers the two halves of the
output and lets the wrapped guider combine them, so both hold the same next state::

    pair = pair_group(world)
    sampler.guider = SplitGuider(sampler.guider, pair, world.rank % 2)

Works for every guider that batches ``[uc, c]`` (``VanillaCFG``, the video guiders).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..errors import InputError
from .distributed import World


def check_cfg_parallel(world: World, guider: Any) -> None:
    """``InputError`` unless the world pairs up and ``guider`` has two halves to split."""
    from ..modules.diffusionmodules.guiders import IdentityGuider

    if world.world_size % 2:
        raise InputError(
            f"--cfg_parallel runs each image on 2 processes; the world size "
            f"{world.world_size} is odd"
        )
    if guider is None or isinstance(guider, IdentityGuider):
        name = "no guider" if guider is None else "IdentityGuider"
        raise InputError(
            f"--cfg_parallel: the model samples without guidance ({name}); there are no "
            "conditional and unconditional halves to split"
        )


def pair_group(world: World) -> Any:
    """The process group of this rank's pair (ranks ``2p``, ``2p + 1``); every rank makes
    every pair's group, as ``torch.distributed.new_group`` asks."""
    import torch.distributed as dist

    if not dist.is_initialized():
        raise InputError("--cfg_parallel needs a process group (start it with torchrun or srun)")
    mine = None
    for first in range(0, world.world_size, 2):
        group = dist.new_group([first, first + 1])
        if first == world.rank - world.rank % 2:
            mine = group
    return mine


class SplitGuider:
    """``guider`` with its batch split over the two processes of ``group``; ``member`` is
    this process's place in the pair (0: unconditional half, 1: conditional half)."""

    def __init__(self, guider: Any, group: Any, member: int) -> None:
        if member not in (0, 1):
            raise InputError(f"member must be 0 or 1, got {member}")
        self.guider = guider
        self.group = group
        self.member = member

    def __getattr__(self, name: str) -> Any:
        if name == "guider":
            raise AttributeError(name)
        return getattr(self.guider, name)

    def _half(self, value: torch.Tensor) -> torch.Tensor:
        rows = value.shape[0] // 2
        return value[self.member * rows : (self.member + 1) * rows]

    def prepare_inputs(
        self, x: torch.Tensor, s: torch.Tensor, c: Mapping[str, Any], uc: Mapping[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """This process's half of the wrapped guider's inputs: the rows of ``x``, ``s`` and
        of every conditioning entry the guider doubled."""
        x2, s2, cond = self.guider.prepare_inputs(x, s, c, uc)
        if x2.shape[0] != 2 * x.shape[0]:
            raise InputError(
                f"{type(self.guider).__name__} does not batch two halves "
                f"({x.shape[0]} rows in, {x2.shape[0]} out); --cfg_parallel cannot split it"
            )
        half = {}
        for key, value in cond.items():
            doubled = torch.is_tensor(value) and value is not c.get(key)
            half[key] = self._half(value) if doubled else value
        return self._half(x2), self._half(s2), half

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Gather both halves of the denoiser output, then guide as the wrapped guider."""
        import torch.distributed as dist

        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(2)]
        dist.all_gather(parts, x, group=self.group)
        return self.guider(torch.cat(parts), sigma)
