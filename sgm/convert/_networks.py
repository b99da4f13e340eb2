"""UNet and first-stage components: diffusers configs and forward converters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..errors import ConfigError
from .svd_keys import convert_video_decoder, svd_unet_key_map

UNET = "model.diffusion_model."
VAE = "first_stage_model."
State = dict[str, torch.Tensor]


def _sub(state: Mapping[str, torch.Tensor], prefix: str, new: str = "") -> State:
    return {new + k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _heads(p: Mapping[str, Any]) -> list[int]:
    channels = [p["model_channels"] * m for m in p["channel_mult"]]
    if p.get("num_head_channels", -1) != -1:
        return [c // p["num_head_channels"] for c in channels]
    return [p["num_heads"]] * len(channels)


def _attention_levels(p: Mapping[str, Any]) -> list[bool]:
    depth = p.get("transformer_depth", 1)
    depths = depth if isinstance(depth, list) else [depth] * len(p["channel_mult"])
    return [2**i in p["attention_resolutions"] and depths[i] > 0 for i in range(len(depths))]


def _context_dim(p: Mapping[str, Any]) -> int | None:
    context = p.get("context_dim")
    return context[0] if isinstance(context, list) else context


def _check_unet(p: Mapping[str, Any], what: str) -> None:
    depth = p.get("transformer_depth", 1)
    middle = p.get("transformer_depth_middle")
    last = depth[-1] if isinstance(depth, list) else depth
    if middle is not None and middle != last:
        raise ConfigError(
            f"{what}: transformer_depth_middle={middle} differs from the last "
            f"level's depth {last}; diffusers' UNet has no such option"
        )
    context = p.get("context_dim")
    if isinstance(context, list) and len(set(context)) > 1:
        raise ConfigError(
            f"{what}: context_dim {context} differs per level; diffusers' "
            "UNet has one cross-attention width"
        )
    if p.get("disable_self_attentions") or p.get("num_attention_blocks"):
        raise ConfigError(
            f"{what}: disable_self_attentions/num_attention_blocks are not "
            "supported by the conversion"
        )


def unet2d_config(p: Mapping[str, Any], time_embed_dim: int | None) -> dict[str, Any]:
    """``UNet2DConditionModel`` config for an sgm ``UNetModel`` (``p``: its params).

    ``time_embed_dim``: width of each size/score embedding (SDXL's ``text_time``
    conditioning); ``None`` maps ``num_classes: sequential`` to a class projection.
    """
    _check_unet(p, "UNetModel")
    levels = _attention_levels(p)
    depth = p.get("transformer_depth", 1)
    config: dict[str, Any] = {
        "in_channels": p["in_channels"],
        "out_channels": p["out_channels"],
        "block_out_channels": [p["model_channels"] * m for m in p["channel_mult"]],
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in levels],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in levels[::-1]],
        "layers_per_block": p["num_res_blocks"],
        "cross_attention_dim": _context_dim(p),
        "attention_head_dim": _heads(p),
        "use_linear_projection": bool(p.get("use_linear_in_transformer", False)),
        "transformer_layers_per_block": depth,
    }
    num_classes = p.get("num_classes")
    if num_classes == "sequential" and time_embed_dim is not None:
        config.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=time_embed_dim,
            projection_class_embeddings_input_dim=p["adm_in_channels"],
        )
    elif num_classes == "sequential":
        config.update(
            class_embed_type="projection",
            projection_class_embeddings_input_dim=p["adm_in_channels"],
        )
    elif num_classes is not None:
        raise ConfigError(
            f"UNetModel: num_classes={num_classes!r} is not supported by the "
            "conversion (None or 'sequential')"
        )
    return config


def convert_unet2d(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> State:
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    return convert_ldm_unet_checkpoint(_sub(state, UNET, UNET), dict(config))


def video_unet_config(p: Mapping[str, Any], time_embed_dim: int, num_frames: int) -> dict[str, Any]:
    """``UNetSpatioTemporalConditionModel`` config for an sgm ``VideoUNet``."""
    _check_unet(p, "VideoUNet")
    expected = {
        "extra_ff_mix_layer": True,
        "use_spatial_context": True,
        "merge_strategy": "learned_with_images",
        "video_kernel_size": [3, 1, 1],
        "num_classes": "sequential",
    }
    for key, value in expected.items():
        if p.get(key) != value:
            raise ConfigError(
                f"VideoUNet: {key}={p.get(key)!r}; diffusers' "
                f"UNetSpatioTemporalConditionModel implements {value!r} only"
            )
    levels = _attention_levels(p)
    return {
        "sample_size": 96,
        "in_channels": p["in_channels"],
        "out_channels": p["out_channels"],
        "block_out_channels": [p["model_channels"] * m for m in p["channel_mult"]],
        "down_block_types": [
            "CrossAttnDownBlockSpatioTemporal" if a else "DownBlockSpatioTemporal" for a in levels
        ],
        "up_block_types": [
            "CrossAttnUpBlockSpatioTemporal" if a else "UpBlockSpatioTemporal" for a in levels[::-1]
        ],
        "layers_per_block": p["num_res_blocks"],
        "cross_attention_dim": _context_dim(p),
        "num_attention_heads": _heads(p),
        "transformer_layers_per_block": p.get("transformer_depth", 1),
        "addition_time_embed_dim": time_embed_dim,
        "projection_class_embeddings_input_dim": p["adm_in_channels"],
        "num_frames": num_frames,
    }


def convert_video_unet(state: Mapping[str, torch.Tensor], num_res_blocks: int) -> State:
    convert = svd_unet_key_map(num_res_blocks)
    return {convert(k): v for k, v in _sub(state, UNET).items()}


def _check_ddconfig(dd: Mapping[str, Any], what: str) -> None:
    if dd.get("attn_resolutions"):
        raise ConfigError(
            f"{what}: attn_resolutions={dd['attn_resolutions']}; diffusers' "
            "VAE has attention in the middle block only"
        )
    if not dd.get("double_z", True) or dd.get("attn_type", "vanilla") not in (
        "vanilla",
        "vanilla-xformers",
    ):
        raise ConfigError(f"{what}: only double_z VAEs with vanilla attention convert")


def vae_config(dd: Mapping[str, Any], embed_dim: int, scale_factor: float) -> dict[str, Any]:
    """``AutoencoderKL`` config for an sgm KL autoencoder with ``ddconfig`` ``dd``."""
    _check_ddconfig(dd, "first_stage_model")
    if embed_dim != dd["z_channels"]:
        raise ConfigError(
            f"first_stage_model: embed_dim={embed_dim} differs from "
            f"z_channels={dd['z_channels']}; diffusers' VAE needs them equal"
        )
    levels = len(dd["ch_mult"])
    return {
        "in_channels": dd["in_channels"],
        "out_channels": dd["out_ch"],
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": [dd["ch"] * m for m in dd["ch_mult"]],
        "latent_channels": dd["z_channels"],
        "layers_per_block": dd["num_res_blocks"],
        "sample_size": dd.get("resolution", 256),
        "scaling_factor": scale_factor,
    }


def convert_vae(
    state: Mapping[str, torch.Tensor], config: Mapping[str, Any], prefix: str = VAE
) -> State:
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    return convert_ldm_vae_checkpoint(_sub(state, prefix, VAE), dict(config))


def temporal_vae_config(dd: Mapping[str, Any], scale_factor: float) -> dict[str, Any]:
    """``AutoencoderKLTemporalDecoder`` config for SVD's first stage."""
    _check_ddconfig(dd, "first_stage_model")
    if dd["num_res_blocks"] != 2:
        raise ConfigError(
            f"first_stage_model: VideoDecoder with num_res_blocks={dd['num_res_blocks']}; "
            "diffusers' TemporalDecoder builds num_res_blocks middle resnets where sgm has "
            "two, so only num_res_blocks=2 converts"
        )
    levels = len(dd["ch_mult"])
    return {
        "in_channels": dd["in_channels"],
        "out_channels": dd["out_ch"],
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "block_out_channels": [dd["ch"] * m for m in dd["ch_mult"]],
        "latent_channels": dd["z_channels"],
        "layers_per_block": dd["num_res_blocks"],
        "sample_size": 768,
        "scaling_factor": scale_factor,
    }


def convert_temporal_vae(
    state: Mapping[str, torch.Tensor], config: Mapping[str, Any], encoder_prefix: str
) -> State:
    """Encoder and ``quant_conv`` from ``encoder_prefix`` (SVD's conditioning-frame
    autoencoder, the one sampling runs), decoder from the first stage."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    encoder = {f"encoder.{k}": v for k, v in _sub(state, encoder_prefix + "encoder.").items()}
    encoder.update(_sub(state, encoder_prefix + "quant_conv.", "quant_conv."))
    config = {**config, "up_block_types": []}
    out = convert_ldm_vae_checkpoint(encoder, config)
    levels = len(config["block_out_channels"])
    decoder = convert_video_decoder(_sub(state, VAE + "decoder."), levels)
    out.update({f"decoder.{k}": v for k, v in decoder.items()})
    return out
