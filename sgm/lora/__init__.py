"""LoRA adapters (through peft) for the denoising network: train, save, load, merge.

Training: give ``DiffusionEngine`` a ``lora_config`` block (see :class:`LoraSettings`);
only the adapter trains, and checkpoints hold only the adapter. Sampling: load one or
more ``*.lora.safetensors`` files (ours, or diffusers/peft files of the same UNet) with
:func:`load_lora` or :func:`apply_lora_specs`, each with its own scale::

    from sgm.lora import load_lora, merge
    load_lora(engine, "style.lora.safetensors", scale=0.8)
    merge(engine)   # optional: fold into the weights
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ._config import (
    ATTENTION_PROJECTIONS,
    SPATIAL_ATTENTION,
    TEMPORAL_ATTENTION,
    LoraSettings,
    resolve_targets,
)
from ._files import AdapterPlan, export_adapter, plan_adapter, save_adapter
from ._layers import adapter_names, adapter_parameters, add_adapter, lora_layers
from ._layers import merge as _merge
from ._layers import set_scale as _set_scale
from ._layers import unmerge as _unmerge
from ._names import network_of

__all__ = [
    "ATTENTION_PROJECTIONS",
    "SPATIAL_ATTENTION",
    "TEMPORAL_ATTENTION",
    "LoraSettings",
    "add_lora",
    "load_lora",
    "save_lora",
    "lora_state_dict",
    "apply_lora_specs",
    "merge",
    "unmerge",
    "set_lora_scale",
    "lora_parameters",
    "adapter_names",
    "network_of",
]


def add_lora(
    model: nn.Module, config: Mapping[str, Any] | LoraSettings | None = None, name: str = "default"
) -> list[str]:
    """Add a new (trainable, zero-output) adapter to ``model``'s network; its layer names."""
    settings = LoraSettings.from_config(config)
    network = network_of(model)
    targets = resolve_targets(network, settings)
    add_adapter(network, targets, settings, name)
    if settings.init_from is not None:
        plan = plan_adapter(network, settings.init_from)
        if plan.settings.rank != settings.rank:
            raise ConfigError(
                f"lora_config.init_from {settings.init_from} has rank "
                f"{plan.settings.rank}, lora_config.rank is {settings.rank}"
            )
        # same function as the file: (alpha / rank) * B here == (file alpha / rank) * B there
        _copy_weights(network, plan, name, plan.settings.lora_alpha / settings.lora_alpha)
    return targets


def _copy_weights(network: nn.Module, plan: AdapterPlan, name: str, b_factor: float = 1.0) -> None:
    layers = dict(lora_layers(network))
    with torch.no_grad():
        for module, (a, b) in plan.weights.items():
            layer = layers.get(module)
            if layer is None or name not in layer.lora_A:
                raise CheckpointError(
                    f"{plan.path}: layer {module!r} has no adapter here "
                    "(target_modules differ from the file's)"
                )
            layer.lora_A[name].weight.copy_(a)
            layer.lora_B[name].weight.copy_(b * b_factor)


def _free_name(network: nn.Module) -> str:
    taken = set(adapter_names(network))
    return next(f"lora{i}" for i in range(len(taken) + 1) if f"lora{i}" not in taken)


def _apply(network: nn.Module, plan: AdapterPlan, scale: float, name: str | None) -> str:
    name = name or _free_name(network)
    add_adapter(network, plan.targets, plan.settings, name)
    _copy_weights(network, plan, name)
    _set_scale(network, scale, name)
    for param in adapter_parameters(network, name):
        param.requires_grad_(False)
    return name


def load_lora(
    model: nn.Module, path: str | os.PathLike, scale: float = 1.0, name: str | None = None
) -> str:
    """Add the adapter in ``path`` to ``model`` at strength ``scale``; its adapter name.

    The file is checked against the network first (``CheckpointError`` names the first
    key that fits no layer); on error nothing changes.
    """
    network = network_of(model)
    plan = plan_adapter(network, path)
    return _apply(network, plan, float(scale), name)


def apply_lora_specs(
    model: nn.Module, specs: Iterable[tuple[str | os.PathLike, float]] | None
) -> list[str]:
    """Load every ``(path, scale)`` (the ``--lora PATH[:SCALE]`` flags); every file is
    checked before the first one is applied."""
    specs = list(specs or [])
    network = network_of(model)
    plans = [(plan_adapter(network, path), float(scale)) for path, scale in specs]
    return [_apply(network, plan, scale, None) for plan, scale in plans]


def save_lora(model: nn.Module, path: str | os.PathLike, name: str = "default") -> Path:
    """Write adapter ``name`` to ``path`` (``*.lora.safetensors``, a new file); the path."""
    return save_adapter(network_of(model), path, name)


def lora_state_dict(model: nn.Module, name: str = "default") -> dict[str, torch.Tensor]:
    """Adapter ``name`` as the tensors a ``.lora.safetensors`` file holds (diffusers keys)."""
    return export_adapter(network_of(model), name)[0]


def lora_parameters(model: nn.Module, name: str | None = None) -> list[nn.Parameter]:
    """The adapter weights (of adapter ``name``, or of all adapters)."""
    return adapter_parameters(network_of(model), name)


def set_lora_scale(model: nn.Module, scale: float, name: str | None = None) -> None:
    """Strength of adapter ``name`` (all adapters when ``None``)."""
    _set_scale(network_of(model), scale, name)


def merge(model: nn.Module) -> None:
    """Fold the adapters into the network weights (same outputs, no adapter cost)."""
    _merge(network_of(model))


def unmerge(model: nn.Module) -> None:
    """Undo :func:`merge`."""
    _unmerge(network_of(model))
