"""Key maps for the SVD networks that diffusers' single-file utilities do not convert.

- :func:`svd_unet_key_map`: ``VideoUNet`` -> ``UNetSpatioTemporalConditionModel``
  (``input_blocks.N.M`` -> ``down_blocks.L.resnets.I`` / ``attentions.I`` / ...).
- :func:`video_decoder_key_map`: ``VideoDecoder`` -> ``TemporalDecoder`` (the decoder of
  ``AutoencoderKLTemporalDecoder``).
- :func:`convert_open_clip_vision`: an open_clip ``VisionTransformer`` -> transformers'
  ``CLIPVisionModelWithProjection`` (q/k/v split, projection transposed).

Each is a forward map (sgm -> diffusers); :mod:`sgm.convert._probe` inverts it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import torch

_UNET_FIXED = {
    "time_embed.0": "time_embedding.linear_1",
    "time_embed.2": "time_embedding.linear_2",
    "label_emb.0.0": "add_embedding.linear_1",
    "label_emb.0.2": "add_embedding.linear_2",
    "input_blocks.0.0": "conv_in",
    "out.0": "conv_norm_out",
    "out.2": "conv_out",
}
_UNET_RES = {
    "in_layers.0": "spatial_res_block.norm1",
    "in_layers.2": "spatial_res_block.conv1",
    "emb_layers.1": "spatial_res_block.time_emb_proj",
    "out_layers.0": "spatial_res_block.norm2",
    "out_layers.3": "spatial_res_block.conv2",
    "skip_connection": "spatial_res_block.conv_shortcut",
    "time_stack.in_layers.0": "temporal_res_block.norm1",
    "time_stack.in_layers.2": "temporal_res_block.conv1",
    "time_stack.emb_layers.1": "temporal_res_block.time_emb_proj",
    "time_stack.out_layers.0": "temporal_res_block.norm2",
    "time_stack.out_layers.3": "temporal_res_block.conv2",
    "time_mixer": "time_mixer",
}
_UNET_ATTN = {
    "time_stack": "temporal_transformer_blocks",
    "time_pos_embed.0": "time_pos_embed.linear_1",
    "time_pos_embed.2": "time_pos_embed.linear_2",
}
_DECODER_RES = {
    "norm1": "spatial_res_block.norm1",
    "conv1": "spatial_res_block.conv1",
    "norm2": "spatial_res_block.norm2",
    "conv2": "spatial_res_block.conv2",
    "nin_shortcut": "spatial_res_block.conv_shortcut",
    "time_stack.in_layers.0": "temporal_res_block.norm1",
    "time_stack.in_layers.2": "temporal_res_block.conv1",
    "time_stack.out_layers.0": "temporal_res_block.norm2",
    "time_stack.out_layers.3": "temporal_res_block.conv2",
    "mix_factor": "time_mixer.mix_factor",
}
_DECODER_ATTN = {
    "norm": "group_norm",
    "q": "to_q",
    "k": "to_k",
    "v": "to_v",
    "proj_out": "to_out.0",
}
_DECODER_FIXED = {
    "conv_in": "conv_in",
    "norm_out": "conv_norm_out",
    "conv_out.time_mix_conv": "time_conv_out",
    "conv_out": "conv_out",
}


def _sub(rest: str, table: Mapping[str, str]) -> str:
    for old in sorted(table, key=len, reverse=True):
        if rest == old or rest.startswith(old + "."):
            return table[old] + rest[len(old) :]
    raise KeyError(rest)


def _unet_block(layer: str, rest: str, prefix: str, index: int) -> str:
    if layer == "0":
        return f"{prefix}.resnets.{index}.{_sub(rest, _UNET_RES)}"
    try:
        rest = _sub(rest, _UNET_ATTN)
    except KeyError:
        pass
    return f"{prefix}.attentions.{index}.{rest}"


def svd_unet_key_map(num_res_blocks: int) -> Callable[[str], str]:
    """``VideoUNet`` key -> ``UNetSpatioTemporalConditionModel`` key, for a UNet with
    ``num_res_blocks`` residual blocks per level. Unknown keys raise ``KeyError``."""
    per_level = num_res_blocks + 1

    def convert(key: str) -> str:
        head, _, param = key.rpartition(".")
        if head in _UNET_FIXED:
            return f"{_UNET_FIXED[head]}.{param}"
        if m := re.fullmatch(r"input_blocks\.(\d+)\.(\d+)\.(.*)", key):
            level, i = divmod(int(m[1]) - 1, per_level)
            if i == num_res_blocks:
                return f"down_blocks.{level}.downsamplers.0.conv.{m[3].split('.', 1)[1]}"
            return _unet_block(m[2], m[3], f"down_blocks.{level}", i)
        if m := re.fullmatch(r"middle_block\.(\d)\.(.*)", key):
            if m[1] == "1":
                return _unet_block("1", m[2], "mid_block", 0)
            return f"mid_block.resnets.{int(m[1]) // 2}.{_sub(m[2], _UNET_RES)}"
        if m := re.fullmatch(r"output_blocks\.(\d+)\.(\d+)\.(.*)", key):
            level, i = divmod(int(m[1]), per_level)
            if m[3].startswith("conv."):
                return f"up_blocks.{level}.upsamplers.0.{m[3]}"
            return _unet_block(m[2], m[3], f"up_blocks.{level}", i)
        raise KeyError(key)

    return convert


def video_decoder_key_map(num_levels: int) -> Callable[[str], str]:
    """``VideoDecoder`` key -> diffusers ``TemporalDecoder`` key, for ``num_levels``
    resolution levels (``len(ch_mult)``). Unknown keys raise ``KeyError``."""

    def convert(key: str) -> str:
        for old, new in _DECODER_FIXED.items():
            if key.startswith(old + "."):
                return new + key[len(old) :]
        if m := re.fullmatch(r"mid\.block_([12])\.(.+)", key):
            return f"mid_block.resnets.{int(m[1]) - 1}.{_sub(m[2], _DECODER_RES)}"
        if m := re.fullmatch(r"mid\.attn_1\.(\w+)\.(\w+)", key):
            return f"mid_block.attentions.0.{_DECODER_ATTN[m[1]]}.{m[2]}"
        if m := re.fullmatch(r"up\.(\d+)\.block\.(\d+)\.(.+)", key):
            level = num_levels - 1 - int(m[1])
            return f"up_blocks.{level}.resnets.{m[2]}.{_sub(m[3], _DECODER_RES)}"
        if m := re.fullmatch(r"up\.(\d+)\.upsample\.conv\.(\w+)", key):
            return f"up_blocks.{num_levels - 1 - int(m[1])}.upsamplers.0.conv.{m[2]}"
        raise KeyError(key)

    return convert


def convert_video_decoder(
    state: Mapping[str, torch.Tensor], num_levels: int
) -> dict[str, torch.Tensor]:
    """A ``VideoDecoder`` state dict in diffusers' ``TemporalDecoder`` layout (the
    attention's 1x1 convolutions become linear weights)."""
    convert = video_decoder_key_map(num_levels)
    out = {}
    for key, value in state.items():
        new = convert(key)
        if re.search(r"attentions\.0\.(to_[qkv]|to_out\.0)\.weight$", new):
            value = value[:, :, 0, 0]
        out[new] = value
    return out


_VISION_FIXED = {
    "class_embedding": "vision_model.embeddings.class_embedding",
    "positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "ln_post.weight": "vision_model.post_layernorm.weight",
    "ln_post.bias": "vision_model.post_layernorm.bias",
}
_VISION_BLOCK = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}


def convert_open_clip_vision(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An open_clip ``VisionTransformer`` state dict (keys relative to ``visual.``) in
    transformers' ``CLIPVisionModelWithProjection`` layout."""
    out = {}
    for key, value in state.items():
        if key in _VISION_FIXED:
            out[_VISION_FIXED[key]] = value
        elif key == "proj":
            out["visual_projection.weight"] = value.T.contiguous()
        elif m := re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)", key):
            prefix = f"vision_model.encoder.layers.{m[1]}"
            out[f"{prefix}.{_sub(m[2], _VISION_BLOCK)}.{m[3]}"] = value
        elif m := re.fullmatch(r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)", key):
            prefix = f"vision_model.encoder.layers.{m[1]}.self_attn"
            for name, chunk in zip("qkv", value.chunk(3, dim=0)):
                out[f"{prefix}.{name}_proj.{m[2]}"] = chunk.clone()
        else:
            raise KeyError(key)
    return out
