"""Trainable LoRA on weights that a layer reads directly: ``nn.MultiheadAttention``'s
fused ``in_proj_weight`` and its ``out_proj.weight`` (open_clip text encoders).

``nn.MultiheadAttention`` hands its weights straight to the attention function, so an
adapter wrapped around a layer's ``forward`` never runs. Here the weight itself is a
parametrization: ``W + (alpha / rank) * B @ A``, recomputed at each use, gradients to A
and B only; the base weight is left untouched bit for bit (it is the parametrization's
``original``). Removing the adapter restores the plain weight; fusing keeps ``W + dW``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize


class WeightLora(nn.Module):
    """``weight -> weight + scale * lora_B @ lora_A`` (peft's initialisation: A Kaiming
    uniform, B zero, so a new adapter changes nothing)."""

    def __init__(self, out_features: int, in_features: int, rank: int, alpha: float, name: str):
        super().__init__()
        self.lora_A = nn.Linear(in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.rank, self.alpha, self.adapter = rank, float(alpha), name
        self.strength = 1.0

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        delta = self.lora_B.weight @ self.lora_A.weight
        return weight + (delta * (self.strength * self.alpha / self.rank)).to(weight.dtype)


def _targets(root: nn.Module) -> Iterator[tuple[str, nn.Module, str]]:
    for name, module in root.named_modules():
        if isinstance(module, nn.MultiheadAttention) and module._qkv_same_embed_dim:
            yield name, module, "in_proj_weight"
            yield f"{name}.out_proj", module.out_proj, "weight"


def add(root: nn.Module, rank: int, alpha: float, name: str) -> list[str]:
    """Put adapter ``name`` on every multi-head attention of ``root``; the weight names."""
    added = []
    for module_name, module, param in list(_targets(root)):
        weight = getattr(module, param)
        lora = WeightLora(weight.shape[0], weight.shape[1], rank, alpha, name)
        lora.to(weight.device)
        parametrize.register_parametrization(module, param, lora)
        added.append(f"{module_name}.{param}")
    return added


def layers(root: nn.Module) -> Iterator[tuple[str, str, WeightLora]]:
    """``(module name, weight name, adapter)`` of every weight adapter under ``root``."""
    for module_name, module in root.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for param, chain in module.parametrizations.items():
            for lora in chain:
                if isinstance(lora, WeightLora):
                    yield module_name, param, lora


def parameters(root: nn.Module, name: str | None = None) -> list[nn.Parameter]:
    return [
        p for _, _, lora in layers(root) if name in (None, lora.adapter) for p in lora.parameters()
    ]


def names(root: nn.Module) -> list[str]:
    out: list[str] = []
    for _, _, lora in layers(root):
        if lora.adapter not in out:
            out.append(lora.adapter)
    return out


def set_strength(root: nn.Module, strength: float, name: str | None = None) -> None:
    for _, _, lora in layers(root):
        if name in (None, lora.adapter):
            lora.strength = float(strength)


def remove(root: nn.Module, name: str | None = None, keep: bool = False) -> None:
    """Take the weight adapters (``name``, or all) off; ``keep`` leaves ``W + dW`` in."""
    for module_name, param, lora in list(layers(root)):
        if name in (None, lora.adapter):
            module = root.get_submodule(module_name) if module_name else root
            parametrize.remove_parametrizations(module, param, leave_parametrized=keep)
