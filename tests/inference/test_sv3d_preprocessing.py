"""SV3D input preprocessing against hand-computed pixels.

The released preprocessing composites on white in float64, truncates to 8 bits, then
scales to [-1, 1]; the object goes to offset ``side // 2 - size // 2`` per axis. Each
image here is small enough, and sized so that no resampling happens (output size ==
square side), that every output pixel follows from the integer closed form
``floor((c * a + 255 * (255 - a)) / 255)``.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from sgm.inference.video import prepare_sv3d_image

WHITE = 255


def _on_white(c: int, a: int) -> int:
    return (c * a + 255 * (255 - a)) // 255


def _rgba(width: int, height: int, pixels: dict[tuple[int, int], tuple[int, ...]]):
    from PIL import Image

    array = np.zeros((height, width, 4), dtype=np.uint8)
    for (y, x), value in pixels.items():
        array[y, x] = value
    return Image.fromarray(array, mode="RGBA")


def _expected(side: int, placed: dict[tuple[int, int], tuple[int, int, int]]) -> torch.Tensor:
    rgb = torch.full((side, side, 3), WHITE, dtype=torch.uint8)
    for (y, x), value in placed.items():
        rgb[y, x] = torch.tensor(value, dtype=torch.uint8)
    return (rgb.permute(2, 0, 1)[None].float() / 255) * 2 - 1


def test_rgba_composited_on_white_and_truncated_to_8_bits():
    # Object: one row of three pixels at x 1..3, y 4 of a 6x6 image (box 3 x 1).
    # (1, a=128): 1*128/255 + 127 = 127.50 -> 127 (rounding would give 128).
    # (100, a=128): 12800/255 + 127 = 177.19 -> 177; (0, a=1): 254.
    obj = {
        (4, 1): (1, 200, 100, 128),
        (4, 2): (200, 10, 0, 255),
        (4, 3): (0, 255, 30, 1),
    }
    out = prepare_sv3d_image(_rgba(6, 6, obj), size=6)
    # side = 6; box 3 wide, 1 tall: x offset 3 - 1 = 2, y offset 3 - 0 = 3.
    placed = {
        (3, 2): (_on_white(1, 128), _on_white(200, 128), _on_white(100, 128)),
        (3, 3): (200, 10, 0),
        (3, 4): (254, 255, 254),
    }
    assert placed[(3, 2)] == (127, 227, 177)
    torch.testing.assert_close(out, _expected(6, placed), rtol=0, atol=0)


def test_frame_ratio_pads_and_centres_at_half_side_minus_half_size():
    # 3x3 opaque box in a 10x10 image; ratio 0.5 -> side int(3 / 0.5) = 6.
    # Offset 6 // 2 - 3 // 2 = 2 per axis ((side - size) // 2 would give 1).
    obj = {(y, x): (10 * y, 10 * x, 7, 255) for y in range(5, 8) for x in range(2, 5)}
    obj[(6, 3)] = (0, 0, 0, 0)  # a hole inside the box stays white
    out = prepare_sv3d_image(_rgba(10, 10, obj), image_frame_ratio=0.5, size=6)
    placed = {
        (y - 5 + 2, x - 2 + 2): (10 * y, 10 * x, 7)
        for y in range(5, 8)
        for x in range(2, 5)
        if (y, x) != (6, 3)
    }
    torch.testing.assert_close(out, _expected(6, placed), rtol=0, atol=0)


def test_non_square_rgba_uses_the_longer_side():
    # A fully opaque 3 wide x 8 tall image: side 8, x offset 4 - 1 = 3, y offset 0.
    obj = {(y, x): (20 * x, 30 * y, 50, 255) for y in range(8) for x in range(3)}
    out = prepare_sv3d_image(_rgba(3, 8, obj), size=8)
    placed = {(y, x + 3): (20 * x, 30 * y, 50) for y in range(8) for x in range(3)}
    torch.testing.assert_close(out, _expected(8, placed), rtol=0, atol=0)


def test_rgb_input_is_padded_on_white(caplog):
    from PIL import Image

    # 6 wide x 3 tall opaque RGB: side 6, offsets x 0, y 3 - 1 = 2.
    array = np.arange(54, dtype=np.uint8).reshape(3, 6, 3) * 4
    with caplog.at_level(logging.WARNING):
        out = prepare_sv3d_image(Image.fromarray(array, mode="RGB"), size=6)
    assert "not RGBA" in caplog.text
    placed = {(y + 2, x): tuple(int(v) for v in array[y, x]) for y in range(3) for x in range(6)}
    torch.testing.assert_close(out, _expected(6, placed), rtol=0, atol=0)


@pytest.mark.parametrize("size", [8, 16])
def test_resized_opaque_colour_stays_on_the_8_bit_grid(size):
    # Resampling a constant opaque square keeps the colour; the output holds only
    # values k / 255 * 2 - 1 (8-bit), never the unquantised blend.
    obj = {(y, x): (90, 180, 45, 255) for y in range(4) for x in range(4)}
    out = prepare_sv3d_image(_rgba(4, 4, obj), size=size)
    torch.testing.assert_close(
        out,
        _expected(size, {(y, x): (90, 180, 45) for y in range(size) for x in range(size)}),
        rtol=0,
        atol=0,
    )
    half_alpha = {(y, x): (0, 0, 0, 128) for y in range(4) for x in range(4)}
    levels = (prepare_sv3d_image(_rgba(4, 4, half_alpha), size=size) + 1) / 2 * 255
    torch.testing.assert_close(levels, levels.round(), rtol=0, atol=1e-4)
