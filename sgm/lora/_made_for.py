"""Which base model an adapter file was made for (from its metadata or its shapes), and
what the model at hand is, for error messages and the inspect command."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ._names import network_of

CONTEXT_WIDTHS = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}


def from_metadata(header: Mapping[str, str]) -> str | None:
    """kohya's ``ss_base_model_version`` / ``ss_v2`` or the modelspec architecture."""
    version = header.get("ss_base_model_version")
    if version:
        return version
    arch = header.get("modelspec.architecture")
    if arch:
        return arch
    if "ss_v2" in header:
        return "sd_v2" if str(header["ss_v2"]).lower() == "true" else "sd_v1"
    return None


def context_width(tensors: Mapping[str, torch.Tensor]) -> int | None:
    """Input width of a cross-attention key projection's adapter (the text width)."""
    for key, value in tensors.items():
        if "attn2" in key and ("to_k" in key or "to_v" in key) and value.ndim >= 2:
            if key.endswith(("lora_down.weight", "lora_A.weight", "hada_w1_b")):
                return int(value.shape[1])
    return None


def guess(header: Mapping[str, str], tensors: Mapping[str, torch.Tensor]) -> str | None:
    """A short description of the base model a file was made for, or ``None``."""
    parts = []
    meta = from_metadata(header)
    if meta:
        parts.append(meta)
    width = context_width(tensors)
    if width is not None:
        family = CONTEXT_WIDTHS.get(width)
        label = f"cross-attention width {width}"
        parts.append(f"{family}, {label}" if family else label)
    keys = list(tensors)
    if any(k.startswith(("lora_te1_", "lora_te2_")) for k in keys) and not meta and not width:
        parts.append("SDXL (two text encoders)")
    return "; ".join(parts) or None


def describe_model(model: nn.Module) -> str:
    """``SDXL-like UNetModel (context_dim 2048) + 2 text encoders``-style summary."""
    from ._kohya_names import text_embedders

    network = network_of(model)
    context = getattr(network, "context_dim", None)
    if isinstance(context, (list, tuple)):
        context = context[0] if context else None
    family = CONTEXT_WIDTHS.get(context) if isinstance(context, int) else None
    texts = len(text_embedders(model))
    out = type(network).__name__
    if context is not None:
        out += f" (context_dim {context}{', ' + family if family else ''})"
    if texts:
        out += f" + {texts} text encoder{'s' if texts > 1 else ''}"
    return out
