"""Watermark round trip: imwatermark's own decoder reads back the embedded 48 bits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sgm.inference.watermark import WATERMARK_BITS, WATERMARK_MESSAGE, WatermarkEmbedder


def _decode(image: torch.Tensor) -> list[int]:
    from imwatermark import WatermarkDecoder

    rgb = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    bits = WatermarkDecoder("bits", 48).decode(np.ascontiguousarray(rgb[..., ::-1]), "dwtDct")
    return [int(b) for b in bits]


def _sample_images() -> torch.Tensor:
    from sklearn.datasets import load_sample_images

    images = [torch.from_numpy(im[:384, :512].copy()) for im in load_sample_images().images]
    return torch.stack(images).permute(0, 3, 1, 2).float() / 255


def test_message_is_the_published_48_bits():
    assert len(WATERMARK_BITS) == 48
    assert int("".join(map(str, WATERMARK_BITS)), 2) == 0xB3EC907BB19E == WATERMARK_MESSAGE


def test_round_trip_on_photographs():
    images = _sample_images()
    marked = WatermarkEmbedder(WATERMARK_BITS)(images)
    assert marked.shape == images.shape and marked.dtype == images.dtype
    assert (marked - images).abs().mean() < 0.02
    for image, original in zip(marked, images):
        assert _decode(image) == WATERMARK_BITS
        assert _decode(original) != WATERMARK_BITS


def test_round_trip_on_noise_with_leading_video_dim():
    generator = torch.Generator().manual_seed(0)
    frames = torch.rand(2, 1, 3, 256, 320, generator=generator)
    marked = WatermarkEmbedder(WATERMARK_BITS)(frames)
    assert marked.shape == frames.shape
    assert _decode(marked[1, 0]) == WATERMARK_BITS


def test_small_images_pass_through_and_bad_shapes_raise():
    small = torch.rand(1, 3, 64, 128)
    assert torch.equal(WatermarkEmbedder()(small), small)
    with pytest.raises(ValueError, match="3, H, W"):
        WatermarkEmbedder()(torch.rand(3, 64, 64))
