"""Layer names of kohya / A1111 / ComfyUI adapter files, and the weights they update here.

kohya's sd-scripts name a layer ``lora_unet_<module path with "_" for ".">`` for the
denoising network and ``lora_te_`` / ``lora_te1_`` / ``lora_te2_`` + the transformers
``CLIPTextModel`` path for the text encoders. Its SDXL network keeps the original module
names (``input_blocks_4_1_transformer_blocks_0_attn1_to_q``), which are ours; its SD 1.x /
2.x files use diffusers' ``UNet2DConditionModel`` names (``down_blocks_1_attentions_0_...``),
read here off diffusers' own converter. open_clip text encoders (SD 2.x, SDXL's second)
have one fused ``in_proj_weight`` per attention: ``q_proj``/``k_proj``/``v_proj`` update its
first, second and third blocks of rows. ComfyUI's generic keys (``diffusion_model.<our
module>``, ``text_encoders.clip_l.transformer.<path>``) name the same layers with dots.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ._names import diffusers_module_names, network_of

UNET = "lora_unet_"
TEXT_PREFIXES = ("lora_te_", "lora_te1_", "lora_te2_")
COMFY = {
    "diffusion_model.": UNET,
    "text_encoders.clip_l.transformer.": "clip_l",
    "text_encoders.clip_g.transformer.": "clip_g",
    "text_encoders.clip_h.transformer.": "clip_h",
}
LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class Target:
    """One updatable weight: ``module.<param>`` (rows ``rows`` of it when not ``None``)."""

    module: nn.Module
    param: str
    name: str  # full dotted name, for messages
    rows: slice | None = None

    @property
    def shape(self):
        weight = getattr(self.module, self.param)
        if self.rows is None:
            return weight.shape
        return weight[self.rows].shape


def _layers(root: nn.Module) -> dict[str, nn.Module]:
    out = {}
    for name, module in root.named_modules():
        if not name or ".lora_" in name or name.endswith(".base_layer"):
            continue
        if hasattr(module, "get_base_layer") and hasattr(module, "lora_A"):
            module = module.get_base_layer()
        if isinstance(module, LAYERS):
            out[name] = module
    return out


def _unet_targets(model: nn.Module, diffusers_names: bool) -> dict[str, Target]:
    network = network_of(model)
    prefix = "model.diffusion_model." if network is not model else ""
    layers = _layers(network)
    out = {UNET + n.replace(".", "_"): Target(m, "weight", prefix + n) for n, m in layers.items()}
    if diffusers_names:
        for ours, theirs in (diffusers_module_names(network) or {}).items():
            if ours in layers:
                out.setdefault(
                    UNET + theirs.replace(".", "_"), Target(layers[ours], "weight", prefix + ours)
                )
    return out


def text_embedders(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, embedder)`` of the CLIP / open_clip text encoders, in conditioner order."""
    embedders = getattr(getattr(model, "conditioner", None), "embedders", None)
    if not embedders:
        return []
    from ..modules.encoders.modules import (
        FrozenCLIPEmbedder,
        FrozenOpenCLIPEmbedder,
        FrozenOpenCLIPEmbedder2,
    )

    kinds = (FrozenCLIPEmbedder, FrozenOpenCLIPEmbedder, FrozenOpenCLIPEmbedder2)
    return [
        (f"conditioner.embedders.{i}", e) for i, e in enumerate(embedders) if isinstance(e, kinds)
    ]


def _clip_targets(name: str, embedder: nn.Module) -> dict[str, Target]:
    root = embedder.transformer
    return {
        n.replace(".", "_"): Target(m, "weight", f"{name}.transformer.{n}")
        for n, m in _layers(root).items()
        if n.startswith("text_model.")
    }


def _open_clip_targets(name: str, embedder: nn.Module) -> dict[str, Target]:
    out = {}
    for i, block in enumerate(embedder.model.transformer.resblocks):
        hf = f"text_model_encoder_layers_{i}_"
        ours = f"{name}.model.transformer.resblocks.{i}."
        width = block.attn.embed_dim
        for j, part in enumerate("qkv"):
            rows = slice(j * width, (j + 1) * width)
            out[f"{hf}self_attn_{part}_proj"] = Target(
                block.attn, "in_proj_weight", f"{ours}attn.in_proj_weight[{part}]", rows
            )
        out[f"{hf}self_attn_out_proj"] = Target(
            block.attn.out_proj, "weight", ours + "attn.out_proj"
        )
        out[f"{hf}mlp_fc1"] = Target(block.mlp.c_fc, "weight", ours + "mlp.c_fc")
        out[f"{hf}mlp_fc2"] = Target(block.mlp.c_proj, "weight", ours + "mlp.c_proj")
    return out


def _text_targets(name: str, embedder: nn.Module) -> dict[str, Target]:
    if hasattr(embedder, "transformer") and hasattr(embedder.transformer, "text_model"):
        return _clip_targets(name, embedder)
    return _open_clip_targets(name, embedder)


def text_prefixes(model: nn.Module) -> dict[str, tuple[str, nn.Module]]:
    """File prefix -> text embedder: ``lora_te_`` for a single encoder (SD 1.x / 2.x),
    ``lora_te1_`` / ``lora_te2_`` in conditioner order for two (SDXL), and ComfyUI's
    ``clip_l`` (transformers CLIP) / ``clip_g`` and ``clip_h`` (open_clip)."""
    texts = text_embedders(model)
    out: dict[str, tuple[str, nn.Module]] = {}
    if len(texts) == 1:
        out["lora_te_"] = out["lora_te1_"] = texts[0]
    else:
        for i, item in enumerate(texts[:2]):
            out[f"lora_te{i + 1}_"] = item
    for name, embedder in texts:
        is_hf = hasattr(getattr(embedder, "transformer", None), "text_model")
        for key in ("clip_l",) if is_hf else ("clip_g", "clip_h"):
            out.setdefault(key, (name, embedder))
    return out


def kohya_targets(model: nn.Module, diffusers_names: bool = False) -> dict[str, Target]:
    """Every layer name a kohya-layout file can hold for ``model`` -> the weight it updates.

    ``diffusers_names`` adds the network's layers under diffusers' names as well (SD 1.x /
    2.x files; reading them runs diffusers' converter once)."""
    out = _unet_targets(model, diffusers_names)
    for prefix, (name, embedder) in text_prefixes(model).items():
        if prefix.startswith("lora_"):
            for key, target in _text_targets(name, embedder).items():
                out[prefix + key] = target
    return out


def normalise(layer: str, model: nn.Module) -> str:
    """ComfyUI's dotted generic names -> kohya's (other names unchanged)."""
    for comfy, kohya in COMFY.items():
        if layer.startswith(comfy):
            rest = layer[len(comfy) :].replace(".", "_")
            if kohya == UNET:
                return UNET + rest
            prefixes = {k: v for k, v in text_prefixes(model).items() if k.startswith("lora_te")}
            wanted = text_prefixes(model).get(kohya)
            for prefix, item in prefixes.items():
                if wanted is not None and item[0] == wanted[0] and prefix != "lora_te_":
                    return prefix + rest
            return f"{kohya}_{rest}"
    return layer
