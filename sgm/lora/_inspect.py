"""What an adapter file holds, read without a model: format, adapter types, ranks, alphas,
targets, the base model it was made for, and its metadata (kohya's ``ss_*`` keys kept)."""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any

from ..errors import CheckpointError
from . import _deltas
from ._files import read
from ._kohya import layout_of, split
from ._made_for import guess

GROUPS = {
    "lora_unet_": "network",
    "diffusion_model.": "network",
    "unet.": "network",
    "lora_te_": "text encoder",
    "lora_te1_": "text encoder 1",
    "lora_te2_": "text encoder 2",
    "text_encoders.clip_l.": "text encoder (clip_l)",
    "text_encoders.clip_g.": "text encoder (clip_g)",
    "text_encoders.clip_h.": "text encoder (clip_h)",
    "text_encoder.": "text encoder 1",
    "text_encoder_2.": "text encoder 2",
}


def _group(layer: str) -> str:
    for prefix in sorted(GROUPS, key=len, reverse=True):
        if layer.startswith(prefix):
            return GROUPS[prefix]
    return "network"


def _kohya_layers(tensors: dict) -> dict[str, dict[str, Any]]:
    layers: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        layer, suffix = split(key)
        layers.setdefault(layer, {})[suffix] = value
    return layers


def _kind(parts: dict) -> str:
    names = set(parts) - set(_deltas.COMMON)
    other = sorted({_deltas.OTHER_TYPES[n] for n in names if n in _deltas.OTHER_TYPES})
    if other:
        return other[0] + " (not supported)"
    return _deltas.kind_of(names) or "unknown"


def describe_file(path: str | os.PathLike) -> dict[str, Any]:
    """A summary of the adapter file ``path`` (a plain dict, JSON-ready)."""
    tensors, header = read(path)
    layout = layout_of(list(tensors), str(path))
    kinds: Counter = Counter()
    targets: Counter = Counter()
    ranks, alphas = set(), set()
    dora = 0
    if layout == "kohya":
        for layer, parts in _kohya_layers(tensors).items():
            kind = _kind(parts)
            kinds[kind] += 1
            targets[_group(layer)] += 1
            factors = {k: v for k, v in parts.items() if k not in _deltas.COMMON}
            if kind in _deltas.TYPES:
                try:
                    rank = _deltas.rank(kind, factors)
                except KeyError:
                    rank = None
                if rank is not None:
                    ranks.add(rank)
            if "alpha" in parts:
                alphas.add(float(parts["alpha"].float().reshape(-1)[0]))
            dora += "dora_scale" in parts
    else:
        for key, value in tensors.items():
            if key.endswith("lora_A.weight"):
                kinds["LoRA"] += 1
                targets[_group(key)] += 1
                ranks.add(int(value.shape[0]))
        try:
            meta = json.loads(header.get("lora_adapter_metadata", "{}"))
            alpha = meta.get("unet.lora_alpha", meta.get("lora_alpha"))
        except (ValueError, AttributeError):
            alpha = None
        if alpha is not None:
            alphas.add(float(alpha))
    if not kinds:
        raise CheckpointError(f"{path}: holds no adapter weights")
    return {
        "file": str(path),
        "format": "kohya / A1111 / ComfyUI" if layout == "kohya" else "diffusers / peft",
        "types": dict(kinds) | ({"DoRA": dora} if dora else {}),
        "ranks": sorted(ranks),
        "alphas": sorted(alphas),
        "targets": dict(sorted(targets.items(), key=lambda kv: (kv[0] != "network", kv[0]))),
        "base_model": guess(header, tensors),
        "metadata": {k: v for k, v in sorted(header.items()) if k != "format"},
    }


def format_summary(info: dict[str, Any], width: int = 200) -> str:
    """``describe_file``'s summary as aligned text lines."""

    def listed(values: list) -> str:
        return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values) or "-"

    lines = [
        f"file        {info['file']}",
        f"format      {info['format']}",
        "types       " + ", ".join(f"{k} ({n} layers)" for k, n in info["types"].items()),
        f"rank        {listed(info['ranks'])}",
        f"alpha       {listed(info['alphas'])}",
        "targets     " + ", ".join(f"{k}: {n} layers" for k, n in info["targets"].items()),
        f"base model  {info['base_model'] or 'not stated'}",
    ]
    if info["metadata"]:
        lines.append("metadata")
        for key, value in info["metadata"].items():
            text = str(value).replace("\n", " ")
            text = text if len(text) <= width else text[: width - 3] + "..."
            lines.append(f"  {key}: {text}")
    return "\n".join(lines)
