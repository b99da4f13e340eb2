"""Batch chunking and spatially tiled application of encoders/decoders.

Tiled application runs ``fn`` on overlapping spatial tiles of the input, one tile
at a time, and blends the tile outputs over the overlaps (each tile's outer quarter
of an overlap is dropped, the middle half cross-faded), so peak activation memory
is that of one tile. Where a quarter of the overlap covers the receptive field of
``fn``, the result is exact for spatially local maps. Convolutions see the same
neighbourhood as in a full pass wherever the overlap exceeds their receptive
field, but GroupNorm statistics and the mid-block attention are per tile, so the
result approximates the full pass (see ``tests/models/test_autoencoder_tiling.py``
for measured differences).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def apply_in_chunks(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, max_batch_size: int | None
) -> torch.Tensor:
    """``fn(x)`` computed on at most ``max_batch_size`` samples at a time."""
    if max_batch_size is None or x.shape[0] <= max_batch_size:
        return fn(x)
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be a positive int, got {max_batch_size}")
    return torch.cat([fn(chunk) for chunk in x.split(max_batch_size)], dim=0)


def tile_starts(size: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Start offsets of full tiles covering ``[0, size)``, overlapping by about ``overlap``.

    Offsets are multiples of ``align`` (``size`` and ``tile`` must be too).
    """
    if tile >= size:
        return [0]
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile_size={tile}), got {overlap}")
    n = math.ceil((size - overlap) / (tile - overlap))
    # Spread the tiles evenly so that all overlaps are about equal.
    return [align * round(i * (size - tile) / (n - 1) / align) for i in range(n)]


def _edge_ramp(overlap: int, device, dtype) -> torch.Tensor:
    """Weights rising 0 -> 1 across an overlap: the outer quarter (next to the tile's
    border, where the tile lacks context) gets 0, the middle half a linear cross-fade.
    Mirrored, it is the neighbour's complement, so the weights sum to 1."""
    position = torch.arange(overlap, device=device, dtype=dtype) + 0.5
    return ((position - overlap / 4) / (overlap / 2)).clamp(0.0, 1.0)


def _ramp(start: int, tile: int, starts: list[int], device, dtype) -> torch.Tensor:
    """1-D blending weight of the tile at ``start``: ramps where neighbours overlap it."""
    w = torch.ones(tile, device=device, dtype=dtype)
    i = starts.index(start)
    if i > 0 and (left := starts[i - 1] + tile - start) > 0:
        w[:left] = torch.minimum(w[:left], _edge_ramp(left, device, dtype))
    if i < len(starts) - 1 and (right := start + tile - starts[i + 1]) > 0:
        w[tile - right :] = torch.minimum(
            w[tile - right :], _edge_ramp(right, device, dtype).flip(0)
        )
    return w


def apply_tiled(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    tile_size: int,
    overlap: int,
    scale: float,
    align: int = 1,
) -> torch.Tensor:
    """Apply a spatially equivariant ``fn`` to overlapping tiles of ``x`` and blend.

    Args:
        fn: maps (B, C, h, w) to (B, C', h * scale, w * scale).
        x: (B, C, H, W).
        tile_size, overlap: tile side and minimum overlap, in pixels of ``x``.
        scale: output/input size ratio (8 for an f8 decoder, 1/8 for its encoder).
        align: tile offsets are multiples of this (the encoder's downsampling factor).
    """
    height, width = x.shape[-2:]
    ys = tile_starts(height, tile_size, overlap, align)
    xs = tile_starts(width, tile_size, overlap, align)
    if len(ys) == 1 and len(xs) == 1:
        return fn(x)
    out = weight = None
    th, tw = min(tile_size, height), min(tile_size, width)
    for y in ys:
        for x0 in xs:
            tile_out = fn(x[..., y : y + th, x0 : x0 + tw])
            if out is None:
                out_h, out_w = round(height * scale), round(width * scale)
                out = tile_out.new_zeros(*tile_out.shape[:-2], out_h, out_w)
                weight = tile_out.new_zeros(out_h, out_w)
            oh, ow = tile_out.shape[-2:]
            oy, ox = round(y * scale), round(x0 * scale)
            wy = _ramp(oy, oh, [round(s * scale) for s in ys], out.device, out.dtype)
            wx = _ramp(ox, ow, [round(s * scale) for s in xs], out.device, out.dtype)
            w2 = wy[:, None] * wx[None, :]
            out[..., oy : oy + oh, ox : ox + ow] += tile_out * w2
            weight[oy : oy + oh, ox : ox + ow] += w2
    return out / weight
