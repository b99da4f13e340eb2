"""The released image models' sampling specs (derived from ``sgm.inference.releases``),
SDXL's aspect-ratio buckets, and the same facts read from a custom model's config."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .releases import ModelArchitecture, Release, for_architecture


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


def release_spec(release: Release) -> SamplingSpec:
    """The ``SamplingSpec`` of an image release (``config``: the file name in
    ``configs/inference``)."""
    return SamplingSpec(
        release.width,
        release.height,
        release.channels,
        release.factor,
        release.is_legacy,
        Path(release.config).name,
        release.ckpt,
        release.is_guided,
    )


# ModelArchitecture -> SamplingSpec, in ModelArchitecture's order (from the release registry)
model_specs = {arch: release_spec(for_architecture(arch)) for arch in ModelArchitecture}


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
