"""LoRA adapters: train, save, load, merge; community files of every common kind.

Training: give ``DiffusionEngine`` a ``lora_config`` block (see :class:`LoraSettings`);
only the adapter trains, and checkpoints hold only the adapter. Sampling: load one or
more adapter files with :func:`load_lora` or :func:`apply_lora_specs`, each with its own
scale. Files in diffusers' / peft's layout (ours) become peft layers on the network; files
in kohya's / A1111's / ComfyUI's layout (LoRA, LoCon, DoRA, LoHa, LoKr; network and text
encoders) update the weights in place, reversibly (see ``_patch``)::

    from sgm.lora import load_lora, merge
    load_lora(engine, "style.lora.safetensors", scale=0.8)
    merge(engine)   # optional: fold peft adapters into the weights
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError, InputError
from . import _fused, _kohya, _patch
from ._config import (
    ATTENTION_PROJECTIONS,
    SPATIAL_ATTENTION,
    TEMPORAL_ATTENTION,
    LoraSettings,
    resolve_targets,
    text_encoder_targets,
)
from ._files import AdapterPlan, export_adapter, plan_adapter, read
from ._kohya_names import text_embedders
from ._layers import adapter_names, adapter_parameters, add_adapter, lora_layers
from ._layers import merge as _merge
from ._layers import remove as _remove_peft
from ._layers import set_scale as _set_scale
from ._layers import unmerge as _unmerge
from ._layers import unwrap as _unwrap
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
    "remove_lora",
    "fuse_lora",
    "lora_names",
    "plan_file",
    "FORMATS",
]


def add_lora(
    model: nn.Module, config: Mapping[str, Any] | LoraSettings | None = None, name: str = "default"
) -> list[str]:
    """Add a new (trainable, zero-output) adapter to ``model``'s network; its layer names."""
    settings = LoraSettings.from_config(config)
    network = network_of(model)
    targets = resolve_targets(network, settings)
    texts = _text_roots(model, settings)  # checked before anything is wrapped
    add_adapter(network, targets, settings, name)
    for prefix, embedder, names in texts:
        add_adapter(embedder, names, settings, name)
        names += _fused.add(embedder, settings.rank, settings.lora_alpha, name)
        targets += [f"{prefix}.{n}" for n in names]
    if settings.init_from is not None:
        plan = _training_start(model, settings.init_from)
        if plan.settings.rank != settings.rank:
            raise ConfigError(
                f"lora_config.init_from {settings.init_from} has rank "
                f"{plan.settings.rank}, lora_config.rank is {settings.rank}"
            )
        # same function as the file: (alpha / rank) * B here == (file alpha / rank) * B there
        _copy_weights(network, plan, name, plan.settings.lora_alpha / settings.lora_alpha)
    return targets


def _text_roots(model: nn.Module, settings: LoraSettings) -> list:
    """``(name, embedder, layer names)`` of the text encoders ``settings`` adapt."""
    if not settings.text_encoders:
        return []
    texts = text_embedders(model)
    if not texts:
        raise ConfigError(
            f"lora_config.text_encoders: {type(model).__name__} has no CLIP / open_clip "
            "text encoder"
        )
    return [(n, e, text_encoder_targets(e)) for n, e in texts]


def _roots(model: nn.Module) -> list[nn.Module]:
    """The modules that hold peft adapters: the network, then the text encoders."""
    return [network_of(model)] + [e for _, e in text_embedders(model)]


def _training_start(model: nn.Module, path: str) -> AdapterPlan:
    """``lora_config.init_from``: a diffusers-layout file, or a kohya LoRA file."""
    plan = plan_file(model, path)
    if isinstance(plan, _kohya.Plan):
        from ._kohya_export import to_adapter_plan

        return to_adapter_plan(plan, network_of(model))
    return plan


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


def lora_names(model: nn.Module) -> list[str]:
    """Names of every adapter on ``model`` (peft layers, then weight adapters)."""
    names: list[str] = []
    for root in _roots(model):
        names += [n for n in adapter_names(root) + _fused.names(root) if n not in names]
    return names + [n for n in _patch.names(model) if n not in names]


def _free_name(model: nn.Module) -> str:
    taken = set(lora_names(model))
    return next(f"lora{i}" for i in range(len(taken) + 1) if f"lora{i}" not in taken)


Plan = AdapterPlan | _kohya.Plan


def plan_file(model: nn.Module, path: str | os.PathLike) -> Plan:
    """Read ``path`` and check it against ``model`` (its format told by its keys);
    nothing changes. ``CheckpointError`` names the file and what does not fit."""
    tensors, header = read(path)
    if _kohya.layout_of(list(tensors), str(path)) == "kohya":
        return _kohya.plan(model, path, tensors, header)
    if any(k.startswith(("text_encoder.", "text_encoder_2.")) for k in tensors):
        single = len(text_embedders(model)) == 1  # diffusers' files with text encoders
        tensors = _kohya.from_diffusers(tensors, header, single)
        return _kohya.plan(model, path, tensors, header)
    return plan_adapter(network_of(model), path, (tensors, header))


def _apply(model: nn.Module, plan: Plan, scale: float, name: str | None) -> str:
    name = name or _free_name(model)
    if name in lora_names(model):
        raise ValueError(f"the model already has an adapter named {name!r}")
    if isinstance(plan, _kohya.Plan):
        _patch.add(plan.adapters, name, scale)
        return name
    network = network_of(model)
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

    Any supported format (see the module docstring). The file is checked against the
    model first (``CheckpointError`` names what does not fit); on error nothing changes.
    """
    return _apply(model, plan_file(model, path), float(scale), name)


def apply_lora_specs(
    model: nn.Module, specs: Iterable[tuple[str | os.PathLike, float]] | None
) -> list[str]:
    """Load every ``(path, scale)`` (the ``--lora PATH[:SCALE]`` flags); every file is
    checked before the first one is applied."""
    plans = [(plan_file(model, path), float(scale)) for path, scale in list(specs or [])]
    return [_apply(model, plan, scale, None) for plan, scale in plans]


FORMATS = ("diffusers", "kohya")


def save_lora(
    model: nn.Module, path: str | os.PathLike, name: str = "default", format: str = "diffusers"
) -> Path:
    """Write adapter ``name`` to ``path`` (``*.safetensors``, a new file); the path.

    ``format``: ``"diffusers"`` (peft keys, the network only; diffusers'
    ``load_lora_weights`` reads it) or ``"kohya"`` (A1111 / ComfyUI / kohya's layout;
    network and text-encoder adapters)."""
    if format not in FORMATS:
        raise ConfigError(f"LoRA format must be one of {list(FORMATS)}, got {format!r}")
    from safetensors.torch import save_file

    from ..output_files import write_new_file
    from ._kohya_export import diffusers_text_tensors, export_kohya

    path = Path(path)
    if path.suffix != ".safetensors":
        raise InputError(f"{path}: LoRA files are written as .safetensors")
    if format == "diffusers":
        tensors, header = export_adapter(network_of(model), name)
        text, meta = diffusers_text_tensors(model, name)
        if text:
            tensors |= text
            config = json.loads(header["lora_adapter_metadata"]) | meta
            header["lora_adapter_metadata"] = json.dumps(config, sort_keys=True)
    else:
        tensors, header = export_kohya(model, name)
    return write_new_file(lambda tmp: save_file(tensors, tmp, metadata=header), [path])


def lora_state_dict(model: nn.Module, name: str = "default") -> dict[str, torch.Tensor]:
    """Adapter ``name`` as the tensors a ``.lora.safetensors`` file holds (diffusers keys)."""
    return export_adapter(network_of(model), name)[0]


def lora_parameters(model: nn.Module, name: str | None = None) -> list[nn.Parameter]:
    """The adapter weights (of adapter ``name``, or of all adapters), network and text
    encoders."""
    return [
        p
        for root in _roots(model)
        for p in adapter_parameters(root, name) + _fused.parameters(root, name)
    ]


def set_lora_scale(model: nn.Module, scale: float, name: str | None = None) -> None:
    """Strength of adapter ``name`` (all adapters when ``None``)."""
    for root in _roots(model):
        if name is None or name in adapter_names(root):
            _set_scale(root, scale, name)
        _fused.set_strength(root, scale, name)
    _patch.set_strength(model, scale, name)


def merge(model: nn.Module) -> None:
    """Fold the peft adapters into the weights (same outputs, no adapter cost); adapters
    from kohya-layout files already live in the weights."""
    for root in _roots(model):
        _merge(root)


def unmerge(model: nn.Module) -> None:
    """Undo :func:`merge`."""
    for root in _roots(model):
        _unmerge(root)


def remove_lora(model: nn.Module, name: str | None = None) -> None:
    """Take adapter ``name`` (every adapter when ``None``) off ``model``: the weights it
    changed come back exactly."""
    for root in _roots(model):
        for adapter in adapter_names(root):
            if name is None or adapter == name:
                _remove_peft(root, adapter)
        _fused.remove(root, name)
    _patch.remove(model, name)


def fuse_lora(model: nn.Module) -> None:
    """Make every adapter permanent: peft adapters merged and unwrapped, kohya-layout
    adapters kept in the weights without their undo copies. Keys are the base model's."""
    for root in _roots(model):
        if adapter_names(root):
            _merge(root)
            _unwrap(root)
        _fused.remove(root, keep=True)
    _patch.fuse(model)
