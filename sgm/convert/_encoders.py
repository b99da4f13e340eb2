"""Text and image encoders: transformers configs and forward converters."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .svd_keys import convert_open_clip_vision

State = dict[str, torch.Tensor]


def _act(block: nn.Module) -> str:
    gelu = block.mlp.gelu
    return "quick_gelu" if type(gelu).__name__ == "QuickGELU" else "gelu"


def clip_text_config(embedder: nn.Module) -> dict[str, Any]:
    """transformers ``CLIPTextConfig`` of a ``FrozenCLIPEmbedder`` (it already is one)."""
    config = embedder.transformer.config.to_dict()
    for key in ("architectures", "transformers_version", "dtype", "torch_dtype", "model_type"):
        config.pop(key, None)
    return config


def convert_clip_text(state: Mapping[str, torch.Tensor], prefix: str) -> State:
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint

    own = {k: v for k, v in state.items() if k.startswith(prefix)}
    return convert_ldm_clip_checkpoint(own, remove_prefix=prefix)


def open_clip_text_config(embedder: nn.Module, num_layers: int) -> dict[str, Any]:
    """``CLIPTextConfig`` of an open_clip text tower with its first ``num_layers`` blocks."""
    model = embedder.model
    block = model.transformer.resblocks[0]
    return {
        "vocab_size": model.vocab_size,
        "hidden_size": model.transformer.width,
        "intermediate_size": block.mlp.c_fc.out_features,
        "num_hidden_layers": num_layers,
        "num_attention_heads": block.attn.num_heads,
        "max_position_embeddings": model.context_length,
        "hidden_act": _act(block),
        "layer_norm_eps": block.ln_1.eps,
        "projection_dim": model.text_projection.shape[1],
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 1,
    }


def convert_open_clip_text(
    state: Mapping[str, torch.Tensor], prefix: str, num_layers: int, projection: bool
) -> State:
    """diffusers' open_clip converter, keeping ``num_layers`` blocks (SD 2.x stops
    before the last one) and the projection only for models that have one."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    own = {k: v for k, v in state.items() if k.startswith(prefix)}
    converted = convert_open_clip_checkpoint(None, own, prefix=prefix)
    out = {}
    for key, value in converted.items():
        layer = re.match(r"text_model\.encoder\.layers\.(\d+)\.", key)
        if layer and int(layer[1]) >= num_layers:
            continue
        if key == "text_projection.weight" and not projection:
            continue
        out[key] = value
    return out


def open_clip_vision_config(visual: nn.Module) -> dict[str, Any]:
    """``CLIPVisionConfig`` of an open_clip ``VisionTransformer``."""
    block = visual.transformer.resblocks[0]
    return {
        "hidden_size": visual.transformer.width,
        "intermediate_size": block.mlp.c_fc.out_features,
        "num_hidden_layers": len(visual.transformer.resblocks),
        "num_attention_heads": block.attn.num_heads,
        "image_size": visual.image_size[0],
        "patch_size": visual.patch_size[0],
        "projection_dim": visual.proj.shape[1],
        "hidden_act": _act(block),
        "layer_norm_eps": block.ln_1.eps,
    }


def convert_image_encoder(state: Mapping[str, torch.Tensor], prefix: str) -> State:
    own = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return convert_open_clip_vision(own)


def flat_text_keys(model: nn.Module, state: Mapping[str, torch.Tensor]) -> State:
    """Converted ``text_model.*`` keys in the layout of ``model`` (transformers >= 5 has
    no ``text_model`` wrapper in ``CLIPTextModel``); keys it does not store dropped."""
    if not hasattr(model, "text_model"):
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    own = model.state_dict()
    return {k: v for k, v in state.items() if k in own or not k.endswith("position_ids")}


def nested_text_keys(model: nn.Module, state: Mapping[str, torch.Tensor]) -> State:
    """The inverse of :func:`flat_text_keys`: a loaded model's keys as ``text_model.*``."""
    if hasattr(model, "text_model") or hasattr(model, "vision_model"):
        return dict(state)
    return {
        k if k.startswith("text_projection") else f"text_model.{k}": v for k, v in state.items()
    }
