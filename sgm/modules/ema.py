"""Exponential moving average of a model's trainable parameters, kept as buffers."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


class LitEma(nn.Module):
    """EMA shadow of ``model``'s trainable parameters.

    Each shadow is a buffer named after its parameter with the dots removed
    (``diffusion_model.out.2.weight`` -> ``diffusion_modelout2weight``), next to the
    buffers ``decay`` and ``num_updates``; these names are checkpoint keys.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, use_num_upates: bool = True):
        super().__init__()
        if not 0.0 <= float(decay) <= 1.0:
            raise ValueError(f"EMA decay must be between 0 and 1, got {decay}")
        self.m_name2s_name: dict[str, str] = {}
        self.register_buffer("decay", torch.tensor(float(decay), dtype=torch.float32))
        start = 0 if use_num_upates else -1
        self.register_buffer("num_updates", torch.tensor(start, dtype=torch.int))
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            shadow_name = name.replace(".", "")
            if shadow_name in self.m_name2s_name.values():
                raise ValueError(f"two parameters map to the same EMA buffer {shadow_name!r}")
            self.m_name2s_name[name] = shadow_name
            self.register_buffer(shadow_name, param.detach().clone())
        self.collected_params: list[torch.Tensor] = []

    def reset_num_updates(self) -> None:
        """Restart the warm-up of the effective decay."""
        self.num_updates.zero_()

    def current_decay(self) -> float:
        """The decay the next update will use: ``min(decay, (1 + n) / (10 + n))``."""
        decay = float(self.decay)
        if int(self.num_updates) >= 0:
            n = int(self.num_updates) + 1
            decay = min(decay, (1 + n) / (10 + n))
        return decay

    @torch.no_grad()
    def forward(self, model: nn.Module) -> None:
        """One EMA update: ``shadow -= (1 - decay) * (shadow - param)``."""
        decay = self.current_decay()
        if int(self.num_updates) >= 0:
            self.num_updates += 1
        shadows = dict(self.named_buffers())
        for name, param in model.named_parameters():
            shadow_name = self.m_name2s_name.get(name)
            if not param.requires_grad or shadow_name is None:
                continue
            shadow = shadows[shadow_name]
            if shadow.dtype != param.dtype or shadow.device != param.device:
                shadow = shadow.to(param)
                setattr(self, shadow_name, shadow)
            shadow.lerp_(param.detach(), 1.0 - decay)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the shadow values into ``model``'s parameters."""
        shadows = dict(self.named_buffers())
        for name, param in model.named_parameters():
            shadow_name = self.m_name2s_name.get(name)
            if param.requires_grad and shadow_name is not None:
                param.data.copy_(shadows[shadow_name].data)

    def store(self, parameters: Iterable[torch.Tensor]) -> None:
        """Keep a copy of ``parameters`` for a later ``restore``."""
        self.collected_params = [param.detach().clone() for param in parameters]

    @torch.no_grad()
    def restore(self, parameters: Iterable[torch.Tensor]) -> None:
        """Put back the values saved by ``store``."""
        for saved, param in zip(self.collected_params, parameters):
            param.data.copy_(saved.data)
        self.collected_params = []
