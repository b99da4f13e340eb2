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
from . import _fused
from ._config import LoraSettings
from ._files import AdapterPlan, describe
from ._kohya import Plan
from ._kohya_names import UNET, text_embedders
from ._layers import lora_layers
from ._names import base_name, network_of


def _open_clip_layer(name: str) -> tuple[str, str] | None:
    """``model.transformer.resblocks.N.<part>`` -> (transformers CLIP layer path, part)."""
    parts = name.split(".")
    if "resblocks" not in parts:
        return None
    i = parts[parts.index("resblocks") + 1]
    tail = ".".join(parts[parts.index("resblocks") + 2 :])
    hf = {"attn": "self_attn", "attn.out_proj": "self_attn.out_proj"}
    hf |= {"mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    if tail not in hf:
        return None
    return f"text_model.encoder.layers.{i}", hf[tail]


def _pairs(name: str, a: torch.Tensor, b: torch.Tensor):
    """``(transformers CLIP module path, lora_A, lora_B)`` of a text-encoder adapter on
    module ``name``; a fused open_clip ``in_proj`` gives q/k/v layers sharing ``lora_A``."""
    if name.startswith("transformer."):  # transformers CLIP: its own path
        yield name[len("transformer.") :], a, b
        return
    block = _open_clip_layer(name)
    if block is None:
        raise InputError(f"text-encoder adapter on {name!r} has no transformers CLIP name")
    head, part = block
    if part != "self_attn":
        yield f"{head}.{part}", a, b
        return
    rows = b.shape[0] // 3
    for j, proj in enumerate("qkv"):  # fused in_proj: one row block each
        yield f"{head}.self_attn.{proj}_proj", a, b[j * rows : (j + 1) * rows]


def text_adapters(model: nn.Module, name: str):
    """``(encoder index, transformers CLIP path, lora_A, lora_B, rank, alpha)`` of every
    text-encoder layer of adapter ``name``."""
    network = network_of(model)
    if network is model:
        return
    for i, (_, embedder) in enumerate(text_embedders(model)):
        found = []
        for module, layer in lora_layers(embedder):
            if name in layer.lora_A:
                a, b = layer.lora_A[name].weight, layer.lora_B[name].weight
                found.append((base_name(module), a, b, int(layer.r[name]), layer.lora_alpha[name]))
        for module, param, lora in _fused.layers(embedder):
            if lora.adapter == name:
                a, b = lora.lora_A.weight, lora.lora_B.weight
                found.append((module, a, b, lora.rank, lora.alpha))
        for module, a, b, rank, alpha in found:
            for path, a_part, b_part in _pairs(module, a, b):
                yield i, path, a_part, b_part, rank, float(alpha)


def diffusers_text_tensors(model: nn.Module, name: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Text-encoder layers of adapter ``name`` in diffusers' layout (``text_encoder.`` /
    ``text_encoder_2.`` + transformers path, ``alpha / rank`` folded into ``lora_B``), and
    the peft config entries (``<prefix>.r`` / ``lora_alpha`` / ``target_modules``) that
    diffusers rebuilds each encoder's adapter from."""
    out, meta = {}, {}
    for i, path, a, b, rank, alpha in text_adapters(model, name):
        prefix = "text_encoder" if i == 0 else f"text_encoder_{i + 1}"
        out[f"{prefix}.{path}.lora_A.weight"] = a.detach().to("cpu", torch.float32).clone()
        up = b.detach().to("cpu", torch.float32) * (alpha / rank)  # a new tensor
        out[f"{prefix}.{path}.lora_B.weight"] = up.contiguous()
        meta[f"{prefix}.r"] = meta[f"{prefix}.lora_alpha"] = rank
        # suffixes (peft matches module names by suffix): transformers' CLIPTextModel
        # nests the layers under ``text_model.`` in some versions, not in others
        meta.setdefault(f"{prefix}.target_modules", []).append(path.split("text_model.")[-1])
    return out, meta


def export_kohya(model: nn.Module, name: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header of adapter ``name`` of ``model`` in kohya's layout."""
    network = network_of(model)
    rows = []
    for module, layer in lora_layers(network):
        if name in layer.lora_A:
            rank, alpha = int(layer.r[name]), float(layer.lora_alpha[name])
            key = UNET + base_name(module).replace(".", "_")
            rows.append((key, layer.lora_A[name].weight, layer.lora_B[name].weight, rank, alpha))
    texts = len(text_embedders(model)) if network is not model else 0
    for i, path, a, b, rank, alpha in text_adapters(model, name):
        prefix = "lora_te_" if texts == 1 else f"lora_te{i + 1}_"
        rows.append((prefix + path.replace(".", "_"), a, b, rank, alpha))
    if not rows:
        raise InputError(f"{type(network).__name__} has no LoRA adapter {name!r} to save")
    out: dict[str, torch.Tensor] = {}
    for key, a, b, _, alpha in rows:
        out[f"{key}.lora_down.weight"] = a.detach().to("cpu", torch.float32).clone()
        out[f"{key}.lora_up.weight"] = b.detach().to("cpu", torch.float32).clone()
        out[f"{key}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
    header = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(max(r[3] for r in rows)),
        "ss_network_alpha": str(max(r[4] for r in rows)),
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
