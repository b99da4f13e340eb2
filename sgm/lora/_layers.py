"""Adapter layers through peft: add, list, scale, merge and read/write their weights."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from ._config import LoraSettings
from ._names import EXTRA


def _peft():
    try:
        import peft
    except ImportError as error:
        raise ImportError(f"LoRA needs peft: {EXTRA}") from error
    return peft


def lora_layers(network: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(module name, peft LoRA layer)`` for every wrapped layer of ``network``."""
    from peft.tuners.lora import LoraLayer

    for name, module in network.named_modules():
        if isinstance(module, LoraLayer):
            yield name, module


def adapter_names(network: nn.Module) -> list[str]:
    """Names of the adapters held by ``network``, in the order they were added."""
    names: list[str] = []
    if "peft" not in sys.modules:  # no peft loaded: no adapter layers exist
        return names
    for _, layer in lora_layers(network):
        names += [n for n in layer.lora_A if n not in names]
    return names


def add_adapter(network: nn.Module, targets: list[str], settings: LoraSettings, name: str) -> None:
    """Wrap the layers ``targets`` (full module names) with a new adapter ``name``."""
    peft = _peft()
    if name in adapter_names(network):
        raise ValueError(f"the network already has an adapter named {name!r}")
    config = peft.LoraConfig(
        r=settings.rank,
        lora_alpha=settings.lora_alpha,
        lora_dropout=float(settings.dropout),
        target_modules=list(targets),
    )
    frozen = {p for p in network.parameters() if not p.requires_grad}
    with warnings.catch_warnings():  # a second adapter is intended here
        warnings.filterwarnings("ignore", message=".*peft_config.*")
        peft.inject_adapter_in_model(config, network, adapter_name=name)
    activate_all(network)
    for param in network.parameters():  # peft unfreezes only adapters; keep the rest as it was
        if param in frozen:
            param.requires_grad_(False)


def activate_all(network: nn.Module) -> None:
    """Make every adapter of every layer active (their outputs add up)."""
    for _, layer in lora_layers(network):
        grads = {id(p): p.requires_grad for p in layer.parameters()}
        layer.set_adapter(list(layer.lora_A.keys()))
        for p in layer.parameters():
            if id(p) in grads:  # (peft's MultiheadAttention layer may re-wrap its weights)
                p.requires_grad_(grads[id(p)])


def adapter_parameters(network: nn.Module, name: str | None = None) -> list[nn.Parameter]:
    """The A/B weights of adapter ``name`` (all adapters when ``None``)."""
    params = []
    for _, layer in lora_layers(network):
        for adapter, module in list(layer.lora_A.items()) + list(layer.lora_B.items()):
            if name is None or adapter == name:
                params += list(module.parameters())
    return params


def set_scale(network: nn.Module, scale: float, name: str | None = None) -> None:
    """Strength of adapter ``name`` (all when ``None``): its output times ``scale``."""
    for _, layer in lora_layers(network):
        for adapter in list(layer.lora_A):
            if name is None or adapter == name:
                if getattr(layer, "merged_adapters", None):
                    raise RuntimeError("unmerge the adapters before changing their scale")
                layer.set_scale(adapter, float(scale))


def merge(network: nn.Module) -> None:
    """Fold the active adapters into the base weights (faster sampling; same outputs)."""
    for _, layer in lora_layers(network):
        if not layer.merged:
            layer.merge()


def unmerge(network: nn.Module) -> None:
    """Take merged adapters back out of the base weights."""
    for _, layer in lora_layers(network):
        if layer.merged:
            layer.unmerge()


def adapter_tensors(network: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """``{module name: (A, B)}``-style flat dict: ``<module>.lora_A.weight`` / ``lora_B``."""
    out = {}
    for module_name, layer in lora_layers(network):
        if name in layer.lora_A:
            out[f"{module_name}.lora_A.weight"] = layer.lora_A[name].weight
            out[f"{module_name}.lora_B.weight"] = layer.lora_B[name].weight
    return out


def adapter_settings(network: nn.Module, name: str) -> tuple[int, float]:
    """``(rank, alpha)`` of adapter ``name``."""
    for _, layer in lora_layers(network):
        if name in layer.r:
            return int(layer.r[name]), float(layer.lora_alpha[name])
    raise KeyError(name)


def remove(network: nn.Module, name: str) -> None:
    """Delete adapter ``name`` from every layer (unmerging it first); a layer left with no
    adapter is unwrapped back to its base layer."""
    for _, layer in list(lora_layers(network)):
        if name in layer.lora_A:
            if name in getattr(layer, "merged_adapters", []):
                layer.unmerge()
            layer.delete_adapter(name)
    for module_name, layer in list(lora_layers(network)):
        if not layer.lora_A:
            _replace(network, module_name, layer.get_base_layer())


def unwrap(network: nn.Module) -> None:
    """Put every wrapped layer's base layer back in its place (merged adapters stay in
    its weights; unmerged ones are dropped)."""
    for module_name, layer in list(lora_layers(network)):
        _replace(network, module_name, layer.get_base_layer())


def _replace(network: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(network.get_submodule(parent) if parent else network, child, module)
