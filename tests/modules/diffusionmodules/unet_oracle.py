"""Helpers shared by the UNet tests: build diffusers' UNet2DConditionModel from our config."""

from __future__ import annotations

import warnings

import torch
import torchvision  # noqa: F401  (import before diffusers' transformers chain)
from diffusers import UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_unet_checkpoint,
    create_unet_diffusers_config_from_ldm,
)

from sgm.modules.diffusionmodules.util import timestep_embedding


def diffusers_config(params: dict) -> dict:
    """diffusers' own ldm -> diffusers UNet config for our network params."""
    original = {
        "model": {
            "params": {
                "network_config": {"params": params},
                "first_stage_config": {"params": {"ddconfig": {"ch_mult": [1, 2, 4, 4]}}},
            }
        }
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return create_unet_diffusers_config_from_ldm(original, {}, image_size=512)


def to_diffusers(ours: torch.nn.Module, params: dict, meta: bool = False):
    """A diffusers UNet holding ``ours``' weights through diffusers' converter (strict)."""
    config = diffusers_config(params)
    state = {"model.diffusion_model." + k: v for k, v in ours.state_dict().items()}
    converted = convert_ldm_unet_checkpoint(state, config)
    with torch.device("meta"):
        theirs = UNet2DConditionModel(**config)
    theirs.load_state_dict(converted, strict=True, assign=True)
    return theirs.eval()


def sdxl_vector(text_embeds: torch.Tensor, time_ids: torch.Tensor) -> torch.Tensor:
    """The SDXL ``y`` vector: pooled text + 256-d sinusoidal embeddings of the size ids."""
    b = text_embeds.shape[0]
    size_emb = timestep_embedding(time_ids.flatten(), 256).reshape(b, -1)
    return torch.cat([text_embeds, size_emb], dim=1)
