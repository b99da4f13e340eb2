"""Input images for the video models: SVD frames resized to multiples of 64, and SV3D/SV4D
objects centred on white in a square."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..image_files import read_image

logger = logging.getLogger(__name__)

SV3D_SIZE = 576


def _to_tensor(image: Any) -> torch.Tensor:
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0) * 2 - 1


def _open(image: Any) -> Any:
    from PIL import Image

    if isinstance(image, Image.Image):
        return image
    path = Path(image)
    if not path.is_file():
        raise InputError(f"input image not found: {path}")
    return read_image(path, f"input image {path}")


def prepare_svd_image(image: Any, multiple: int = 64) -> torch.Tensor:
    """RGB image (path or PIL) -> ``(1, 3, H, W)`` in [-1, 1], H and W multiples of ``multiple``.

    Sizes that are not multiples are resized (LANCZOS) down to the nearest multiple.
    """
    from PIL import Image

    image = _open(image).convert("RGB")
    width, height = image.size
    new_w = max(multiple, width - width % multiple)
    new_h = max(multiple, height - height % multiple)
    if (new_w, new_h) != (width, height):
        logger.warning(
            "resizing %dx%d to %dx%d (multiples of %d)", width, height, new_w, new_h, multiple
        )
        image = image.resize((new_w, new_h), Image.LANCZOS)
    if (new_h, new_w) != (576, 1024):
        logger.warning("the SVD models were trained at 1024x576; got %dx%d", new_w, new_h)
    return _to_tensor(image)


def _centre_offset(side: int, size: int) -> int:
    # The released SV3D/SV4D preprocessing centres at side // 2 - size // 2, which is
    # one pixel off (side - size) // 2 when the parities of side and size differ.
    return side // 2 - size // 2


def _on_white_uint8(rgba: Any) -> Any:
    """RGBA image -> RGB image composited on white, 8-bit as the released scripts make it.

    The blend runs in float64 on [0, 1] values and is truncated (not rounded) to 8 bits,
    exactly as the original preprocessing does.
    """
    from PIL import Image

    values = np.asarray(rgba, dtype=np.uint8) / 255.0
    alpha = values[..., 3:]
    rgb = values[..., :3] * alpha + (1 - alpha)
    return Image.fromarray((rgb * 255).astype(np.uint8), mode="RGB")


def prepare_sv3d_image(
    image: Any, image_frame_ratio: float | None = None, size: int = SV3D_SIZE
) -> torch.Tensor:
    """Object image (path or PIL) -> ``(1, 3, size, size)`` in [-1, 1] on white.

    RGBA input: the alpha bounding box is placed at the centre of a square of side
    ``max(box) / image_frame_ratio`` (default: the larger image side), resized
    (LANCZOS), composited on white and quantised to 8 bits, as in the released SV3D
    scripts. Other inputs are padded to a square and treated the same way (no
    background removal is done; a warning says so).
    """
    from PIL import Image

    image = _open(image)
    if image.mode == "RGBA":
        alpha = np.asarray(image)[..., 3]
        ys, xs = np.nonzero(alpha)
        if len(xs) == 0:
            raise InputError("SV3D input has an empty alpha channel (fully transparent)")
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        crop = image.crop(box)
        largest = max(crop.size)
        side = int(largest / image_frame_ratio) if image_frame_ratio else max(image.size)
        side = max(side, largest)
    else:
        logger.warning("SV3D input is not RGBA: background is kept (no background removal)")
        crop = image.convert("RGBA")
        side = max(crop.size)
    square = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    width, height = crop.size
    square.paste(crop, (_centre_offset(side, width), _centre_offset(side, height)))
    square = square.resize((size, size), Image.LANCZOS)
    return _to_tensor(_on_white_uint8(square))
