"""Which diffusers components a model family has, and how each is built and converted."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from . import _encoders as enc
from . import _networks as net

FAMILIES = {
    "sd2": ["FrozenOpenCLIPEmbedder"],
    "sdxl_base": ["FrozenCLIPEmbedder", "FrozenOpenCLIPEmbedder2"]
    + ["ConcatTimestepEmbedderND"] * 3,
    "sdxl_refiner": ["FrozenOpenCLIPEmbedder2"] + ["ConcatTimestepEmbedderND"] * 3,
    "svd": [
        "FrozenOpenCLIPImagePredictionEmbedder",
        "ConcatTimestepEmbedderND",
        "ConcatTimestepEmbedderND",
        "VideoPredictionEmbedderWithEncoder",
        "ConcatTimestepEmbedderND",
    ],
}
PIPELINES = {
    "sd2": "StableDiffusionPipeline",
    "sdxl_base": "StableDiffusionXLPipeline",
    "sdxl_refiner": "StableDiffusionXLImg2ImgPipeline",
    "svd": "StableVideoDiffusionPipeline",
}
NETWORKS = {
    "sd2": "UNetModel",
    "sdxl_base": "UNetModel",
    "sdxl_refiner": "UNetModel",
    "svd": "VideoUNet",
}
FIRST_STAGES = {
    "sd2": "AutoencoderKL",
    "sdxl_base": "AutoencoderKL",
    "sdxl_refiner": "AutoencoderKL",
    "svd": "AutoencodingEngine",
}


@dataclass
class Component:
    """One diffusers folder: class, config, and the forward map from the engine's state."""

    name: str
    library: str
    class_name: str
    config: dict[str, Any]
    convert: Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]]
    prefixes: tuple[str, ...]
    pad_token: str | None = None  # text encoders: the tokenizer's padding token


@dataclass
class Layout:
    """The diffusers side of one sgm model: pipeline class and components."""

    family: str
    pipeline: str
    components: list[Component]
    # sgm prefix -> the sgm prefix whose tensors it copies (one diffusers tensor, two
    # sgm copies: SVD's first-stage encoder and the conditioning-frame encoder).
    aliases: dict[str, str] = field(default_factory=dict)


def family_of(engine: nn.Module) -> str:
    """``sd2``, ``sdxl_base``, ``sdxl_refiner`` or ``svd``; ``ConfigError`` otherwise."""
    embedders = [type(e).__name__ for e in engine.conditioner.embedders]
    network = type(engine.model.diffusion_model).__name__
    first = type(engine.first_stage_model).__name__
    for family, expected in FAMILIES.items():
        if embedders == expected:
            if network != NETWORKS[family]:
                raise ConfigError(
                    f"network {network} is not supported with the {family} "
                    f"conditioner (expected {NETWORKS[family]})"
                )
            if first != FIRST_STAGES[family]:
                raise ConfigError(
                    f"first stage {first} is not supported for {family} "
                    f"(expected {FIRST_STAGES[family]})"
                )
            return family
    raise ConfigError(
        f"conditioner embedders [{', '.join(embedders)}] match no family diffusers has a "
        f"pipeline for (SD 2.x, SDXL base, SDXL refiner, SVD)"
    )


def _time_embed_dim(engine: nn.Module, family: str) -> int | None:
    sizes = [
        e.outdim
        for e in engine.conditioner.embedders
        if type(e).__name__ == "ConcatTimestepEmbedderND"
    ]
    if not sizes:
        return None
    if len(set(sizes)) > 1:
        raise ConfigError(f"{family}: size/score embedders of different widths {sizes}")
    return sizes[0]


def _unet(engine: nn.Module, params: Mapping[str, Any], family: str) -> Component:
    p = params["network_config"]["params"]
    embed = _time_embed_dim(engine, family)
    if family == "svd":
        guider = params.get("sampler_config", {}).get("params", {}).get("guider_config", {})
        frames = guider.get("params", {}).get("num_frames", 14)
        config = net.video_unet_config(p, embed, frames)
        convert = functools.partial(net.convert_video_unet, num_res_blocks=p["num_res_blocks"])
        return Component(
            "unet", "diffusers", "UNetSpatioTemporalConditionModel", config, convert, (net.UNET,)
        )
    config = net.unet2d_config(p, embed)
    convert = functools.partial(net.convert_unet2d, config=config)
    return Component("unet", "diffusers", "UNet2DConditionModel", config, convert, (net.UNET,))


def _ddconfig(first_stage: Mapping[str, Any]) -> dict[str, Any]:
    params = first_stage["params"]
    return params["ddconfig"] if "ddconfig" in params else params["encoder_config"]["params"]


def _vae(engine: nn.Module, params: Mapping[str, Any], family: str) -> Component:
    dd = _ddconfig(params["first_stage_config"])
    scale = params.get("scale_factor", 1.0)
    if family == "svd":
        index = [type(e).__name__ for e in engine.conditioner.embedders].index(
            "VideoPredictionEmbedderWithEncoder"
        )
        encoder = f"conditioner.embedders.{index}.encoder."
        config = net.temporal_vae_config(dd, scale)
        convert = functools.partial(net.convert_temporal_vae, config=config, encoder_prefix=encoder)
        prefixes = (encoder + "encoder.", encoder + "quant_conv.", net.VAE + "decoder.")
        return Component(
            "vae", "diffusers", "AutoencoderKLTemporalDecoder", config, convert, prefixes
        )
    embed_dim = params["first_stage_config"]["params"]["embed_dim"]
    config = net.vae_config(dd, embed_dim, scale)
    convert = functools.partial(net.convert_vae, config=config)
    return Component("vae", "diffusers", "AutoencoderKL", config, convert, (net.VAE,))


def _text_encoders(engine: nn.Module, family: str) -> list[Component]:
    out = []
    names = ["text_encoder", "text_encoder_2"] if family != "sdxl_refiner" else ["text_encoder_2"]
    for i, embedder in enumerate(engine.conditioner.embedders):
        kind = type(embedder).__name__
        if kind == "FrozenCLIPEmbedder":
            prefix = f"conditioner.embedders.{i}.transformer."
            convert = functools.partial(enc.convert_clip_text, prefix=prefix)
            out.append(
                Component(
                    names[len(out)],
                    "transformers",
                    "CLIPTextModel",
                    enc.clip_text_config(embedder),
                    convert,
                    (prefix,),
                )
            )
        elif kind in ("FrozenOpenCLIPEmbedder", "FrozenOpenCLIPEmbedder2"):
            prefix = f"conditioner.embedders.{i}.model."
            layers = len(embedder.model.transformer.resblocks)
            # SD 2.x reads the penultimate layer: diffusers' SD 2.x text encoder stops
            # before the last block and has no projection.
            sd2 = family == "sd2"
            if sd2 and embedder.layer != "penultimate":
                raise ConfigError(
                    "FrozenOpenCLIPEmbedder with layer 'last' has no "
                    "diffusers equivalent (SD 2.x reads 'penultimate')"
                )
            keep = layers - 1 if sd2 else layers
            convert = functools.partial(
                enc.convert_open_clip_text, prefix=prefix, num_layers=keep, projection=not sd2
            )
            out.append(
                Component(
                    names[len(out)],
                    "transformers",
                    "CLIPTextModel" if sd2 else "CLIPTextModelWithProjection",
                    enc.open_clip_text_config(embedder, keep),
                    convert,
                    (prefix,),
                    pad_token="!",
                )
            )
    return out


def _image_encoder(engine: nn.Module) -> Component:
    embedder = engine.conditioner.embedders[0].open_clip
    if embedder.max_crops > 0 or embedder.output_tokens:
        raise ConfigError(
            "FrozenOpenCLIPImageEmbedder with crops or token outputs has no diffusers equivalent"
        )
    prefix = "conditioner.embedders.0.open_clip.model.visual."
    config = enc.open_clip_vision_config(embedder.model.visual)
    convert = functools.partial(enc.convert_image_encoder, prefix=prefix)
    return Component(
        "image_encoder",
        "transformers",
        "CLIPVisionModelWithProjection",
        config,
        convert,
        ("conditioner.embedders.0.open_clip.model.",),
    )


def layout(engine: nn.Module, params: Mapping[str, Any]) -> Layout:
    """The diffusers layout of ``engine`` (built from ``params``, its ``model.params``)."""
    family = family_of(engine)
    components = [_unet(engine, params, family), _vae(engine, params, family)]
    aliases = {}
    if family == "svd":
        components.append(_image_encoder(engine))
        encoder = components[1].prefixes[0]
        aliases[net.VAE + "encoder."] = encoder
    else:
        components.extend(_text_encoders(engine, family))
    return Layout(family, PIPELINES[family], components, aliases)
