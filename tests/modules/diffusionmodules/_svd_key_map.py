"""sgm VideoUNet -> diffusers UNetSpatioTemporalConditionModel state-dict key map.

diffusers ships no SVD checkpoint converter; this is the layout its repository
script ``convert_svd_to_diffusers.py`` implements (``input_blocks.N.M`` ->
``down_blocks.L.resnets.I`` / ``attentions.I`` / ``downsamplers.0``, ...).
"""

from __future__ import annotations

import re
from collections.abc import Callable

FIXED = {
    "time_embed.0": "time_embedding.linear_1",
    "time_embed.2": "time_embedding.linear_2",
    "label_emb.0.0": "add_embedding.linear_1",
    "label_emb.0.2": "add_embedding.linear_2",
    "input_blocks.0.0": "conv_in",
    "out.0": "conv_norm_out",
    "out.2": "conv_out",
}
RES = {
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
ATTN = {
    "time_stack": "temporal_transformer_blocks",
    "time_pos_embed.0": "time_pos_embed.linear_1",
    "time_pos_embed.2": "time_pos_embed.linear_2",
}


def _sub(rest: str, table: dict) -> str:
    for old in sorted(table, key=len, reverse=True):
        if rest == old or rest.startswith(old + "."):
            return table[old] + rest[len(old) :]
    return rest


def _block(layer: str, rest: str, prefix: str, index: int) -> str:
    if layer == "0":
        return f"{prefix}.resnets.{index}.{_sub(rest, RES)}"
    return f"{prefix}.attentions.{index}.{_sub(rest, ATTN)}"


def make_key_map(num_res_blocks: int) -> Callable[[str], str]:
    """The key map for a VideoUNet with ``num_res_blocks`` per level."""
    per_level = num_res_blocks + 1

    def convert(key: str) -> str:
        head, _, param = key.rpartition(".")
        if head in FIXED:
            return f"{FIXED[head]}.{param}"
        if m := re.match(r"input_blocks\.(\d+)\.(\d+)\.(.*)", key):
            level, i = divmod(int(m[1]) - 1, per_level)
            if i == num_res_blocks:
                return f"down_blocks.{level}.downsamplers.0.conv.{m[3].split('.', 1)[1]}"
            return _block(m[2], m[3], f"down_blocks.{level}", i)
        if m := re.match(r"middle_block\.(\d)\.(.*)", key):
            if m[1] == "1":
                return f"mid_block.attentions.0.{_sub(m[2], ATTN)}"
            return f"mid_block.resnets.{int(m[1]) // 2}.{_sub(m[2], RES)}"
        m = re.match(r"output_blocks\.(\d+)\.(\d+)\.(.*)", key)
        level, i = divmod(int(m[1]), per_level)
        if m[3].startswith("conv."):
            return f"up_blocks.{level}.upsamplers.0.{m[3]}"
        return _block(m[2], m[3], f"up_blocks.{level}", i)

    return convert
