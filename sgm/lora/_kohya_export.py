"""Adapters trained here written in kohya's layout (A1111, ComfyUI, kohya's own scripts),
and kohya LoRA files read back as trainable peft adapters.

Layer names are kohya's: ``lora_unet_`` + the network's module path with ``_`` (the
original module names, which A1111 and ComfyUI map for every model family), and
``lora_te1_`` / ``lora_te2_`` (``lora_te_`` with one encoder) + the transformers CLIP
path for text-encoder adapters; an open_clip attention's fused ``in_proj`` adapter is
written as ``q_proj`` / ``k_proj`` / ``v_proj`` layers sharing its ``lora_down``. Each
layer has ``lora_down.weight`` (peft's ``lora_A``), ``lora_up.weight`` (``lora_B``) and
``alpha``, unscaled: a reader applies ``alpha / rank`` as peft does.
"""

from __future__ import annotations

import json

import torch
from torch import nn

from ..errors import CheckpointError, InputError
from ._config import LoraSettings
from ._files import AdapterPlan, describe
from ._kohya import Plan
from ._kohya_names import UNET, text_embedders
from ._layers import lora_layers
from ._names import base_name, network_of


def _text_layers(model: nn.Module) -> list[tuple[str, str, nn.Module]]:
    """``(kohya prefix, module path inside the encoder, peft layer)`` of text adapters."""
    texts = text_embedders(model)
    prefixes = ["lora_te_"] if len(texts) == 1 else ["lora_te1_", "lora_te2_"]
    return [
        (prefix, base_name(name), layer)
        for prefix, (_, embedder) in zip(prefixes, texts)
        for name, layer in lora_layers(embedder)
    ]


def _open_clip_layer(name: str) -> tuple[str, str] | None:
    """``transformer.resblocks.N.<part>`` -> (kohya block name, its layer), else None."""
    parts = name.split(".")
    if "resblocks" not in parts:
        return None
    i = parts[parts.index("resblocks") + 1]
    tail = ".".join(parts[parts.index("resblocks") + 2 :])
    hf = {"attn": "self_attn", "attn.out_proj": "self_attn_out_proj"}
    hf |= {"mlp.c_fc": "mlp_fc1", "mlp.c_proj": "mlp_fc2"}
    if tail not in hf:
        return None
    return f"text_model_encoder_layers_{i}_", hf[tail]


def _pairs(prefix: str, name: str, layer: nn.Module, adapter: str):
    a, b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
    if name.startswith("transformer."):  # transformers CLIP: its own path
        yield prefix + name[len("transformer.") :].replace(".", "_"), a, b
        return
    block = _open_clip_layer(name[len("model.") :])
    if block is None:
        raise InputError(f"text-encoder adapter on {name!r} has no kohya name")
    head, part = block
    if part != "self_attn":
        yield prefix + head + part, a, b
        return
    for j, proj in enumerate("qkv"):  # fused in_proj: one row block each
        rows = b.shape[0] // 3
        yield prefix + head + f"self_attn_{proj}_proj", a, b[j * rows : (j + 1) * rows]


def export_kohya(model: nn.Module, name: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header of adapter ``name`` of ``model`` in kohya's layout."""
    network = network_of(model)
    items = [(UNET, base_name(n), layer) for n, layer in lora_layers(network)]
    items += _text_layers(model) if network is not model else []
    out: dict[str, torch.Tensor] = {}
    ranks, alphas = set(), set()
    for prefix, module, layer in items:
        if name not in layer.lora_A:
            continue
        rank, alpha = int(layer.r[name]), float(layer.lora_alpha[name])
        ranks.add(rank)
        alphas.add(alpha)
        pairs = (
            [
                (
                    prefix + module.replace(".", "_"),
                    layer.lora_A[name].weight,
                    layer.lora_B[name].weight,
                )
            ]
            if prefix == UNET
            else list(_pairs(prefix, module, layer, name))
        )
        for key, a, b in pairs:
            out[f"{key}.lora_down.weight"] = a.detach().to("cpu", torch.float32).contiguous()
            out[f"{key}.lora_up.weight"] = b.detach().to("cpu", torch.float32).contiguous()
            out[f"{key}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
    if not out:
        raise InputError(f"{type(network).__name__} has no LoRA adapter {name!r} to save")
    header = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(max(ranks)),
        "ss_network_alpha": str(max(alphas)),
        "sgm_lora": json.dumps({"network": describe(network), "layout": "kohya"}, sort_keys=True),
    }
    return out, header


def to_adapter_plan(plan: Plan, network: nn.Module) -> AdapterPlan:
    """A kohya LoRA file (network layers only) as a peft adapter plan, for training on
    from it (``lora_config.init_from``). One rank and one alpha give the file's tensors
    unchanged; other alphas are folded into ``lora_up``."""
    ranks = {a.tensors["lora_down.weight"].shape[0] for a in plan.adapters if a.kind == "LoRA"}
    if any(a.kind != "LoRA" or "lora_mid.weight" in a.tensors for a in plan.adapters):
        raise CheckpointError(f"{plan.path}: only plain LoRA files can start a LoRA training")
    if any(not a.layer.startswith(UNET) for a in plan.adapters) or len(ranks) != 1:
        raise CheckpointError(
            f"{plan.path}: a training start needs network layers of one rank, "
            f"found ranks {sorted(ranks)}"
        )
    rank = ranks.pop()
    alphas = [a.alpha if a.alpha is not None else float(rank) for a in plan.adapters]
    common = max(set(alphas), key=alphas.count)
    prefix = "model.diffusion_model."
    weights = {}
    for adapter, alpha in zip(plan.adapters, alphas):
        module = adapter.target.name
        module = module[len(prefix) :] if module.startswith(prefix) else module
        up = adapter.tensors["lora_up.weight"]
        up = up if alpha == common else up * (alpha / common)
        weights[module] = (adapter.tensors["lora_down.weight"], up)
    settings = LoraSettings(rank=rank, alpha=common, target_modules=tuple(weights), temporal=True)
    return AdapterPlan(plan.path, list(weights), weights, settings)
