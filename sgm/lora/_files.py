"""``*.lora.safetensors``: adapter weights in the peft / diffusers key layout.

Keys are ``unet.<module>.lora_A.weight`` (rank x in) and ``unet.<module>.lora_B.weight``
(out x rank), where ``<module>`` is diffusers' ``UNet2DConditionModel`` module name when
diffusers converts the network (image UNets), else our own module name. The header holds
``lora_adapter_metadata`` (the peft ``LoraConfig`` diffusers rebuilds: ``r``,
``lora_alpha``, ``target_modules``) and ``sgm_lora`` (network, layout, rank, alpha).
The adapter's ``alpha / rank`` factor is folded into ``lora_B`` and the file says
``alpha == rank``, so readers that ignore the header (diffusers without ``weight_name``)
give the same outputs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, InputError
from ..output_files import write_new_file
from ._config import LoraSettings, adaptable_modules
from ._layers import adapter_settings, adapter_tensors
from ._names import base_name, diffusers_module_names

PREFIX = "unet."
SUFFIXES = (".lora_A.weight", ".lora_B.weight")


def describe(network: nn.Module) -> str:
    """The network's class and main widths, e.g. ``UNetModel(model_channels=320, ...)``."""
    fields = ("in_channels", "model_channels", "context_dim")
    values = [f"{f}={getattr(network, f)}" for f in fields if hasattr(network, f)]
    return f"{type(network).__name__}({', '.join(values)})"


def _layout(network: nn.Module, modules: list[str]) -> tuple[str, dict[str, str]]:
    names = diffusers_module_names(network)
    if names and all(m in names for m in modules):
        return "diffusers", names
    return "sgm", {m: m for m in modules}


def export_adapter(network: nn.Module, name: str) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and header of adapter ``name`` of ``network``, as written to a file."""
    tensors = adapter_tensors(network, name)
    if not tensors:
        raise InputError(f"{type(network).__name__} has no LoRA adapter {name!r} to save")
    modules = [base_name(k[: -len(SUFFIXES[0])]) for k in tensors if k.endswith(SUFFIXES[0])]
    layout, names = _layout(network, modules)
    rank, alpha = adapter_settings(network, name)
    out = {}
    for key, value in tensors.items():
        module, suffix = key.rsplit(".lora_", 1)
        value = value.detach().to("cpu", torch.float32)
        if suffix.startswith("B"):  # alpha / rank folded into B: every reader agrees on scale
            value = value * (alpha / rank)
        out[PREFIX + names[base_name(module)] + ".lora_" + suffix] = value.contiguous()
    peft_meta = {
        f"{PREFIX}r": rank,
        f"{PREFIX}lora_alpha": rank,
        f"{PREFIX}target_modules": sorted(names[m] for m in modules),
    }
    ours = {
        "network": describe(network),
        "layout": layout,
        "rank": rank,
        "alpha": rank,
        "trained_alpha": alpha,
    }
    header = {
        "format": "pt",
        "lora_adapter_metadata": json.dumps(peft_meta, sort_keys=True),
        "sgm_lora": json.dumps(ours, sort_keys=True),
    }
    return out, header


def save_adapter(network: nn.Module, path: str | os.PathLike, name: str) -> Path:
    """Write adapter ``name`` to a new ``.safetensors`` file (atomic, never overwrites)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise InputError(f"{path}: LoRA files are written as .lora.safetensors")
    tensors, header = export_adapter(network, name)
    return write_new_file(lambda tmp: save_file(tensors, tmp, metadata=header), [path])


@dataclass
class AdapterPlan:
    """A checked adapter file: its layers (our names), weights and settings."""

    path: str
    targets: list[str]
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]
    settings: LoraSettings


def read(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and header of an adapter file: ``.safetensors``, or a pickled state dict
    (``.pt``/``.ckpt``/``.bin``, read with tensors and plain containers only; it has no
    header). ``CheckpointError`` names a missing, truncated or unreadable file, and a
    pickle that would run code."""
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    from ..checkpoint import PICKLE_SUFFIXES, load_state_dict, safetensors_header

    if not Path(path).is_file():
        raise CheckpointError(f"LoRA file not found: {path}")
    if Path(path).suffix.lower() in PICKLE_SUFFIXES:
        return load_state_dict(path), {}
    try:
        safetensors_header(path)
    except CheckpointError as error:
        raise CheckpointError(str(error).replace(" safetensors", " .safetensors")) from None
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path}: not a readable .safetensors file ({error})") from None


def _alpha(header: dict, rank: int) -> float:
    for key, field in (
        ("sgm_lora", "alpha"),
        ("lora_adapter_metadata", f"{PREFIX}lora_alpha"),
        ("lora_adapter_metadata", "lora_alpha"),
    ):
        try:
            value = json.loads(header[key])[field]
        except (KeyError, TypeError, ValueError):
            continue
        if value is not None:
            return float(value)
    return float(rank)


def plan_adapter(
    network: nn.Module,
    path: str | os.PathLike,
    contents: tuple[dict[str, torch.Tensor], dict] | None = None,
) -> AdapterPlan:
    """Read (unless ``contents`` holds its tensors and header) and check ``path`` against
    ``network`` without changing anything.

    Raises ``CheckpointError`` naming the first key that fits no layer of ``network``.
    """
    tensors, header = contents if contents is not None else read(path)
    try:
        made_for = json.loads(header.get("sgm_lora", "{}")).get("network")
    except ValueError:
        made_for = None
    expects = f"made for {made_for}" if made_for else "made for another network"
    ours = describe(network)
    layers = adaptable_modules(network)
    inverse = {v: k for k, v in (diffusers_module_names(network) or {}).items()}
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    first_key: dict[str, str] = {}
    for key, value in tensors.items():
        stem = key[len(PREFIX) :] if key.startswith(PREFIX) else key
        if not stem.endswith(SUFFIXES):
            raise CheckpointError(
                f"{path}: key {key!r} is not a LoRA weight (expected "
                "'<module>.lora_A.weight' / '.lora_B.weight', peft layout)"
            )
        module, part = stem[: -len(".weight")].rsplit(".", 1)
        module = inverse.get(module, module)
        if not torch.isfinite(value.float()).all():
            raise CheckpointError(f"{path}: key {key!r} holds NaN or infinite values")
        if module not in layers:
            raise CheckpointError(
                f"{path}: key {key!r} matches no layer of this {ours} (the file was {expects})"
            )
        pairs.setdefault(module, {})[part] = value
        first_key.setdefault(module, key)
    if not pairs:
        raise CheckpointError(f"{path}: holds no LoRA weights")
    weights, ranks = {}, set()
    for module, pair in pairs.items():
        if set(pair) != {"lora_A", "lora_B"}:
            raise CheckpointError(f"{path}: layer {module!r} lacks lora_A or lora_B")
        a, b = pair["lora_A"], pair["lora_B"]
        weight = layers[module].weight
        if (
            a.ndim < 2
            or b.shape[0] != weight.shape[0]
            or a.shape[1] != weight.shape[1]
            or a.shape[0] != b.shape[1]
            or a.shape[2:] != weight.shape[2:]
        ):
            raise CheckpointError(
                f"{path}: key {first_key[module]!r} (shape {tuple(a.shape)}/{tuple(b.shape)}) "
                f"does not fit layer {module!r} {tuple(weight.shape)} of this {ours} "
                f"(the file was {expects})"
            )
        weights[module] = (a, b)
        ranks.add(a.shape[0])
    if len(ranks) != 1:
        raise CheckpointError(f"{path}: adapters of mixed ranks {sorted(ranks)} are not supported")
    rank = ranks.pop()
    settings = LoraSettings(
        rank=rank, alpha=_alpha(header, rank), target_modules=tuple(weights), temporal=True
    )
    return AdapterPlan(str(path), list(weights), weights, settings)
