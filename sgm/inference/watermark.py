"""Invisible watermark (invisible-watermark ``dwtDct``) for sampled images and video frames."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

logger = logging.getLogger(__name__)

WATERMARK_MESSAGE = 0b101100111110110010010000011110111011000110011110
WATERMARK_BITS = [int(bit) for bit in bin(WATERMARK_MESSAGE)[2:]]
MIN_PIXELS = 256 * 256


def _encoder(bits: Sequence[int]):
    try:
        from imwatermark import WatermarkEncoder
    except ImportError as error:
        raise ImportError(
            "watermarking needs the invisible-watermark package; install the `watermark` "
            "extra (pip install 'sgm[watermark]')"
        ) from error
    encoder = WatermarkEncoder()
    encoder.set_watermark("bits", [int(b) for b in bits])
    return encoder


class WatermarkEmbedder:
    """Embeds a fixed bit message into ``([N,] B, 3, H, W)`` images in [0, 1] (dwtDct)."""

    def __init__(self, watermark: Sequence[int] = WATERMARK_BITS) -> None:
        self.watermark = [int(b) for b in watermark]
        self.encoder = _encoder(self.watermark)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """Watermarked copy of ``image``; images under 256x256 pixels are returned as is."""
        if image.dim() not in (4, 5) or image.shape[-3] != 3:
            raise ValueError(f"expected ([N,] B, 3, H, W) images, got shape {tuple(image.shape)}")
        height, width = image.shape[-2:]
        if height * width < MIN_PIXELS:
            logger.warning("image %dx%d is below 256x256 pixels; not watermarked", width, height)
            return image
        flat = image.reshape(-1, *image.shape[-3:])
        rgb = (flat.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
        bgr = rgb.permute(0, 2, 3, 1).cpu().numpy()[..., ::-1]
        marked = np.stack([self.encoder.encode(np.ascontiguousarray(x), "dwtDct") for x in bgr])
        out = torch.from_numpy(np.ascontiguousarray(marked[..., ::-1])).permute(0, 3, 1, 2)
        out = (out.float() / 255).clamp(0, 1).to(device=image.device, dtype=image.dtype)
        return out.reshape(image.shape)


def embed_watermark(image: torch.Tensor) -> torch.Tensor:
    """``WatermarkEmbedder(WATERMARK_BITS)(image)``."""
    return WatermarkEmbedder(WATERMARK_BITS)(image)


# --------------------------------------------------------------------------- detection

# Verdicts by the number of matching bits (out of 48), with the thresholds the original
# detector uses: up to 27 is what chance gives on an unmarked image.
VERDICTS = (
    (27, "not watermarked"),
    (33, "partial match"),
    (35, "likely watermarked"),
    (len(WATERMARK_BITS), "watermarked"),
)


def _decoder(length: int):
    try:
        from imwatermark import WatermarkDecoder
    except ImportError as error:
        raise ImportError(
            "watermark detection needs the invisible-watermark package; install the "
            "`watermark` extra (pip install 'sgm[watermark]')"
        ) from error
    return WatermarkDecoder("bits", length)


def decode_watermark(
    image: np.ndarray | torch.Tensor, length: int = len(WATERMARK_BITS)
) -> list[int]:
    """The ``length`` bits hidden in one image by :class:`WatermarkEmbedder` (dwtDct).

    ``image`` is an ``(H, W, 3)`` RGB ``uint8`` array or a ``(3, H, W)`` tensor in [0, 1];
    it must be at least 256x256 pixels.
    """
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a (3, H, W) image tensor, got {tuple(image.shape)}")
        image = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
        image = image.permute(1, 2, 0).cpu().numpy()
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got {image.shape} {image.dtype}")
    if image.shape[0] * image.shape[1] < MIN_PIXELS:
        raise ValueError(f"image {image.shape[1]}x{image.shape[0]} is below 256x256 pixels")
    bgr = np.ascontiguousarray(image[..., ::-1])
    return [int(b) for b in _decoder(length).decode(bgr, "dwtDct")]


def matching_bits(
    image: np.ndarray | torch.Tensor, watermark: Sequence[int] = WATERMARK_BITS
) -> int:
    """How many bits decoded from ``image`` equal the ``watermark`` message."""
    decoded = decode_watermark(image, len(watermark))
    return sum(int(a == int(b)) for a, b in zip(decoded, watermark))


def verdict(matches: int) -> str:
    """``"not watermarked"``, ``"partial match"``, ``"likely watermarked"`` or
    ``"watermarked"`` for a count of matching bits."""
    for limit, label in VERDICTS:
        if matches <= limit:
            return label
    return VERDICTS[-1][1]


def detect_watermark(image: np.ndarray | torch.Tensor) -> tuple[int, str]:
    """``(matching bits, verdict)`` of the sgm watermark in one image."""
    matches = matching_bits(image)
    return matches, verdict(matches)
