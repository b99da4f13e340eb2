"""Which network an adapter belongs to, and our module names in diffusers' UNet layout."""

from __future__ import annotations

import logging
import warnings

from torch import nn

logger = logging.getLogger(__name__)

EXTRA = "pip install 'sgm[lora]'"


def network_of(model: nn.Module) -> nn.Module:
    """The denoising network of an engine (``model.diffusion_model``), a wrapper, or itself."""
    inner = getattr(model, "model", None)
    if isinstance(inner, nn.Module) and isinstance(
        getattr(inner, "diffusion_model", None), nn.Module
    ):
        return inner.diffusion_model
    if isinstance(getattr(model, "diffusion_model", None), nn.Module):
        return model.diffusion_model
    return model


def base_name(name: str) -> str:
    """A parameter name without the adapter wrapping (``.base_layer``)."""
    return name.replace(".base_layer", "")


def _converter_config(network: nn.Module) -> dict | None:
    from ..modules.diffusionmodules.openaimodel import UNetModel

    if type(network) is not UNetModel:
        return None
    blocks = set(network.num_res_blocks)
    if len(blocks) != 1:
        return None
    return {
        "layers_per_block": blocks.pop(),
        "class_embed_type": None,
        "addition_embed_type": None,
        "num_class_embeds": None,
    }


def diffusers_module_names(network: nn.Module) -> dict[str, str] | None:
    """Our module names -> those of diffusers' ``UNet2DConditionModel``, read off diffusers'
    own ldm checkpoint converter; ``None`` for networks it does not convert."""
    cached = getattr(network, "_lora_diffusers_names", None)
    if cached is not None:
        return cached or None
    config = _converter_config(network)
    names: dict[str, str] = {}
    if config is not None:
        try:
            from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
        except ImportError as error:
            raise ImportError(f"LoRA files in diffusers' layout need diffusers: {EXTRA}") from error
        state = {}
        for key, value in network.state_dict().items():
            if ".lora_" not in key:
                state["model.diffusion_model." + base_name(key)] = value
        ours = {id(v): k[len("model.diffusion_model.") :] for k, v in state.items()}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                converted = convert_ldm_unet_checkpoint(state, config)
        except Exception as error:  # noqa: BLE001 - any converter failure: our own layout
            logger.info(
                "diffusers' converter does not read this %s (%s); LoRA files use sgm module names",
                type(network).__name__,
                error,
            )
            converted = {}
        for theirs, value in converted.items():
            key = ours.get(id(value))
            if key is not None and key.endswith(".weight") and theirs.endswith(".weight"):
                names[key[: -len(".weight")]] = theirs[: -len(".weight")]
    object.__setattr__(network, "_lora_diffusers_names", names)
    return names or None
