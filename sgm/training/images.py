"""Image grids and atomic, non-overwriting PNG writes."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from ..output_files import numbered_names, write_new_file


def make_grid(
    images: torch.Tensor, nrow: int = 8, padding: int = 2, pad_value: float = 0.0
) -> torch.Tensor:
    """Tile ``(B, C, H, W)`` images into one ``(C, H', W')`` image, ``nrow`` per row."""
    if images.ndim != 4:
        raise ValueError(f"make_grid expects (B, C, H, W), got shape {tuple(images.shape)}")
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    count, channels, height, width = images.shape
    ncol = min(max(int(nrow), 1), max(count, 1))
    nrows = math.ceil(count / ncol) if count else 1
    cell_h, cell_w = height + padding, width + padding
    grid = images.new_full((channels, nrows * cell_h + padding, ncol * cell_w + padding), pad_value)
    for i in range(count):
        row, col = divmod(i, ncol)
        top, left = row * cell_h + padding, col * cell_w + padding
        grid[:, top : top + height, left : left + width] = images[i]
    return grid


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """A ``(C, H, W)`` tensor in [0, 1] as an ``(H, W, C)`` uint8 array."""
    array = image.detach().float().clamp(0.0, 1.0).mul(255.0).round().byte().cpu()
    return array.permute(1, 2, 0).numpy()


def save_png(array: np.ndarray, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``array`` (H, W, C uint8) as PNG, atomically.

    Without ``overwrite`` an existing file is kept and a numbered name is used.
    """
    from PIL import Image

    image = Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array)
    return write_new_file(
        lambda tmp: image.save(tmp, format="PNG"), numbered_names(path), overwrite
    )
