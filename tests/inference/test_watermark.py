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


def test_names_importable_from_helpers_as_in_the_original():
    from sgm.inference import helpers, watermark

    assert helpers.WatermarkEmbedder is watermark.WatermarkEmbedder
    assert helpers.WATERMARK_MESSAGE == 0xB3EC907BB19E
    assert helpers.WATERMARK_BITS == WATERMARK_BITS


def _flip(bits: list[int], positions: list[int]) -> list[int]:
    return [1 - b if i in positions else b for i, b in enumerate(bits)]


@pytest.mark.parametrize("flipped", [0, 5, 13, 20, 48])
def test_decoder_agrees_with_invisible_watermark(flipped):
    """Embed a message differing from ours in ``flipped`` bits: our decoder reads what
    imwatermark's decoder reads, and counts the matches with our message from it."""
    from sgm.inference.watermark import decode_watermark, matching_bits

    image = _sample_images()[1]
    positions = list(range(0, 48, 48 // flipped))[:flipped] if flipped else []
    message = _flip(WATERMARK_BITS, positions)
    marked = WatermarkEmbedder(message)(image[None])[0]
    oracle = _decode(marked)
    assert sum(a != b for a, b in zip(oracle, message)) <= 2  # dwtDct is nearly exact
    assert decode_watermark(marked) == oracle
    rgb = (marked.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert decode_watermark(rgb) == oracle
    assert matching_bits(marked) == sum(a == b for a, b in zip(oracle, WATERMARK_BITS))
    assert abs(matching_bits(marked) - (48 - flipped)) <= 2


@pytest.mark.parametrize(
    "matches,expected",
    [
        (0, "not watermarked"),
        (24, "not watermarked"),
        (27, "not watermarked"),
        (28, "partial match"),
        (33, "partial match"),
        (34, "likely watermarked"),
        (35, "likely watermarked"),
        (36, "watermarked"),
        (48, "watermarked"),
    ],
)
def test_verdict_thresholds_of_the_original_detector(matches, expected):
    from sgm.inference.watermark import verdict

    assert verdict(matches) == expected


def test_detect_on_clean_and_marked_photographs():
    from sgm.inference.watermark import detect_watermark

    for image in _sample_images():
        assert detect_watermark(image)[1] == "not watermarked"
        assert detect_watermark(WatermarkEmbedder()(image[None])[0]) == (48, "watermarked")


def test_decoder_rejects_small_or_malformed_images():
    from sgm.inference.watermark import decode_watermark

    with pytest.raises(ValueError, match="256x256"):
        decode_watermark(np.zeros((128, 256, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        decode_watermark(np.zeros((256, 256, 3), np.float32))
    with pytest.raises(ValueError, match="3, H, W"):
        decode_watermark(torch.zeros(1, 3, 256, 256))
