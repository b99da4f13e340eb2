"""The resolution levels of the convolutional VAE and the DDPM UNet: the ``down`` stack
(Encoder, Model), the ``mid`` block and the ``up`` stack (Decoder; Model with skips)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ._vae_blocks import Downsample, ResnetBlock, Upsample, make_attn


def level_multipliers(ch_mult: Sequence[int]) -> tuple[int, ...]:
    if isinstance(ch_mult, int) or len(ch_mult) == 0:
        raise ValueError(f"ch_mult must be a non-empty list of ints, got {ch_mult!r}")
    return tuple(int(m) for m in ch_mult)


def init_sizes(
    module,
    ch,
    temb_ch,
    ch_mult,
    num_res_blocks,
    attn_resolutions,
    resolution,
    in_channels,
    use_linear_attn,
    attn_type,
) -> tuple[tuple[int, ...], list[int], str]:
    """Set the size attributes of Encoder, Decoder and Model; returns the normalised
    ``(ch_mult, attn_resolutions, attn_type)``."""
    ch_mult = level_multipliers(ch_mult)
    module.ch = ch
    module.temb_ch = temb_ch
    module.num_resolutions = len(ch_mult)
    module.num_res_blocks = num_res_blocks
    module.resolution = resolution
    module.in_channels = in_channels
    attn_type = "linear" if use_linear_attn else attn_type
    return ch_mult, [int(r) for r in attn_resolutions], attn_type


def down_levels(
    ch,
    ch_mult,
    num_res_blocks,
    attn_resolutions,
    dropout,
    resamp_with_conv,
    resolution,
    temb_ch,
    attn_type,
) -> tuple[nn.ModuleList, int, int]:
    """The ``down`` stack shared by Encoder and Model: (modules, channels, resolution)."""
    in_ch_mult = (1, *ch_mult)
    down = nn.ModuleList()
    curr_res = resolution
    block_in = ch
    for i_level, mult in enumerate(ch_mult):
        block, attn = nn.ModuleList(), nn.ModuleList()
        block_in, block_out = ch * in_ch_mult[i_level], ch * mult
        for _ in range(num_res_blocks):
            block.append(
                ResnetBlock(
                    in_channels=block_in,
                    out_channels=block_out,
                    temb_channels=temb_ch,
                    dropout=dropout,
                )
            )
            block_in = block_out
            if curr_res in attn_resolutions:
                attn.append(make_attn(block_in, attn_type=attn_type))
        level = nn.Module()
        level.block, level.attn = block, attn
        if i_level != len(ch_mult) - 1:
            level.downsample = Downsample(block_in, resamp_with_conv)
            curr_res //= 2
        down.append(level)
    return down, block_in, curr_res


def mid_block(block_in, temb_ch, dropout, attn_type, make_resblock=ResnetBlock, attn_fn=make_attn):
    """The ``mid`` block: resnet block, attention, resnet block at ``block_in`` channels."""
    mid = nn.Module()
    mid.block_1 = make_resblock(
        in_channels=block_in, out_channels=block_in, temb_channels=temb_ch, dropout=dropout
    )
    mid.attn_1 = attn_fn(block_in, attn_type=attn_type)
    mid.block_2 = make_resblock(
        in_channels=block_in, out_channels=block_in, temb_channels=temb_ch, dropout=dropout
    )
    return mid


def up_levels(
    ch,
    ch_mult,
    num_res_blocks,
    attn_resolutions,
    dropout,
    resamp_with_conv,
    block_in,
    curr_res,
    temb_ch,
    attn_type,
    make_resblock=ResnetBlock,
    attn_fn=make_attn,
    skip: bool = False,
) -> tuple[nn.ModuleList, int]:
    """The ``up`` stack of Decoder and, with ``skip`` connections, Model."""
    in_ch_mult = (1, *ch_mult)
    up = nn.ModuleList()
    for i_level in reversed(range(len(ch_mult))):
        block, attn = nn.ModuleList(), nn.ModuleList()
        block_out = ch * ch_mult[i_level]
        for i_block in range(num_res_blocks + 1):
            skip_in = 0
            if skip:
                skip_in = ch * in_ch_mult[i_level] if i_block == num_res_blocks else block_out
            block.append(
                make_resblock(
                    in_channels=block_in + skip_in,
                    out_channels=block_out,
                    temb_channels=temb_ch,
                    dropout=dropout,
                )
            )
            block_in = block_out
            if curr_res in attn_resolutions:
                attn.append(attn_fn(block_in, attn_type=attn_type))
        level = nn.Module()
        level.block, level.attn = block, attn
        if i_level != 0:
            level.upsample = Upsample(block_in, resamp_with_conv)
            curr_res *= 2
        up.insert(0, level)
    return up, block_in
