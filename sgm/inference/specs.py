"""The released image models: their names, sizes, configs and checkpoints, SDXL's
aspect-ratio buckets, and the same facts read from a custom model's config."""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum
from typing import Any


class ModelArchitecture(str, Enum):
    """Released image models."""

    SD_2_1 = "stable-diffusion-v2-1"
    SD_2_1_768 = "stable-diffusion-v2-1-768"
    SDXL_V0_9_BASE = "stable-diffusion-xl-v0-9-base"
    SDXL_V0_9_REFINER = "stable-diffusion-xl-v0-9-refiner"
    SDXL_V1_BASE = "stable-diffusion-xl-v1-base"
    SDXL_V1_REFINER = "stable-diffusion-xl-v1-refiner"
    SDXL_TURBO = "stable-diffusion-xl-turbo"
    SD_TURBO = "stable-diffusion-turbo"


@dataclass
class SamplingSpec:
    """Image size, latent channels and downsampling factor, config and checkpoint names."""

    width: int
    height: int
    channels: int
    factor: int
    is_legacy: bool
    config: str
    ckpt: str
    is_guided: bool


def _spec(
    size: int, config: str, ckpt: str, is_legacy: bool, is_guided: bool = True
) -> SamplingSpec:
    return SamplingSpec(size, size, 4, 8, is_legacy, config, ckpt, is_guided)


model_specs = {
    ModelArchitecture.SD_2_1: _spec(512, "sd_2_1.yaml", "v2-1_512-ema-pruned.safetensors", True),
    ModelArchitecture.SD_2_1_768: _spec(
        768, "sd_2_1_768.yaml", "v2-1_768-ema-pruned.safetensors", True
    ),
    ModelArchitecture.SDXL_V0_9_BASE: _spec(
        1024, "sd_xl_base.yaml", "sd_xl_base_0.9.safetensors", False
    ),
    ModelArchitecture.SDXL_V0_9_REFINER: _spec(
        1024, "sd_xl_refiner.yaml", "sd_xl_refiner_0.9.safetensors", True
    ),
    ModelArchitecture.SDXL_V1_BASE: _spec(
        1024, "sd_xl_base.yaml", "sd_xl_base_1.0.safetensors", False
    ),
    ModelArchitecture.SDXL_V1_REFINER: _spec(
        1024, "sd_xl_refiner.yaml", "sd_xl_refiner_1.0.safetensors", True
    ),
    # distilled few-step models: no classifier-free guidance (sgm.inference.turbo)
    ModelArchitecture.SDXL_TURBO: _spec(
        512, "sd_xl_base.yaml", "sd_xl_turbo_1.0.safetensors", False, is_guided=False
    ),
    ModelArchitecture.SD_TURBO: _spec(
        512, "sd_2_1.yaml", "sd_turbo.safetensors", False, is_guided=False
    ),
}


# SDXL's trained aspect-ratio buckets: width / height (rounded) -> (width, height).
SD_XL_BASE_RATIOS = {
    "0.5": (704, 1408),
    "0.52": (704, 1344),
    "0.57": (768, 1344),
    "0.6": (768, 1280),
    "0.68": (832, 1216),
    "0.72": (832, 1152),
    "0.78": (896, 1152),
    "0.82": (896, 1088),
    "0.88": (960, 1088),
    "0.94": (960, 1024),
    "1.0": (1024, 1024),
    "1.07": (1024, 960),
    "1.13": (1088, 960),
    "1.21": (1088, 896),
    "1.29": (1152, 896),
    "1.38": (1152, 832),
    "1.46": (1216, 832),
    "1.67": (1280, 768),
    "1.75": (1344, 768),
    "1.91": (1344, 704),
    "2.0": (1408, 704),
    "2.09": (1472, 704),
    "2.4": (1536, 640),
    "2.5": (1600, 640),
    "2.89": (1664, 576),
    "3.0": (1728, 576),
}


def _embedder_keys(config: Any) -> set[str]:
    embedders = config.get("conditioner_config", {}).get("params", {}).get("emb_models", []) or []
    return {str(e.get("input_key")) for e in embedders}


def infer_spec(config: Any, ckpt: str | os.PathLike) -> SamplingSpec:
    """A SamplingSpec read from a model config (channels, factor, legacy text path)."""
    params = config["model"]["params"] if "model" in config else config["params"]
    channels = int(params["network_config"]["params"]["out_channels"])
    ddconfig = params["first_stage_config"].get("params", {}).get("ddconfig")
    factor = 2 ** (len(ddconfig["ch_mult"]) - 1) if ddconfig else 1
    keys = _embedder_keys(params)
    is_legacy = not ("txt" in keys and "target_size_as_tuple" in keys) or (
        "aesthetic_score" in keys
    )
    return SamplingSpec(1024, 1024, channels, factor, is_legacy, "", str(ckpt), True)
