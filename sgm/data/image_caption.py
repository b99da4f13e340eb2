"""Image–caption samples for fine-tuning, with SDXL's size and crop conditioning.

:class:`ImageCaptionSample` maps a webdataset sample (an image under ``jpg``/``png``/
``webp``..., a caption under ``txt``) to the batch entries the SD 2.1 and SDXL
conditioners read::

    jpg                     (3, H, W) in [-1, 1], resized (shorter side) and cropped
    txt                     the caption
    original_size_as_tuple  [height, width] of the stored image
    crop_coords_top_left    [top, left] of the crop in the resized image
    target_size_as_tuple    [H, W]
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..image_files import ImageTooLarge, check_size, opened_image

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


def where(sample: Mapping) -> str:
    """``shard <url>, sample '<key>'`` for error messages."""
    return f"shard {sample.get('__url__', '?')}, sample {sample.get('__key__', '?')!r}"


def missing_field(sample: Mapping, field: str) -> InputError:
    fields = sorted(k for k in sample if not k.startswith("__"))
    return InputError(f"{where(sample)}: missing field {field!r} (it has {fields})")


def _size(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        size = (size, size)
    height, width = (int(s) for s in size)
    if height <= 0 or width <= 0:
        raise InputError(f"size must be positive, got {size}")
    return height, width


def _pil(image: Any, sample: Mapping, field: str) -> Any:
    from PIL import Image

    if isinstance(image, (bytes, bytearray)):
        try:
            with opened_image(io.BytesIO(image), f"{where(sample)}: field {field!r}") as opened:
                opened.load()
                image = opened.copy()
        except InputError:
            raise
        except Exception as error:  # noqa: BLE001 - any decoder failure names the sample
            raise InputError(
                f"{where(sample)}: field {field!r} is not a readable image ({error})"
            ) from None
    if not isinstance(image, Image.Image):
        raise InputError(
            f"{where(sample)}: field {field!r} holds {type(image).__name__}, "
            "not an image (decode with 'pil' or leave it as bytes)"
        )
    check_size(*image.size, f"{where(sample)}: field {field!r}")
    return image.convert("RGB")


def guarded_decoder(decoder: Any) -> Callable[[str, Any], Any]:
    """A webdataset decoder (an image spec such as ``"pil"``, or a ``(key, data)``
    function) that first reads the header of every image field: one claiming more than
    ``sgm.image_files.MAX_PIXELS`` pixels raises ``ImageTooLarge`` and is not decoded (the
    pipeline's handler then warns, naming the shard and sample, and skips it, as for any
    sample that cannot be decoded)."""
    import re

    import webdataset as wds

    handler = wds.autodecode.imagehandler(decoder) if isinstance(decoder, str) else decoder
    extensions = set(wds.autodecode.IMAGE_EXTENSIONS) | set(IMAGE_KEYS)

    def decode(key: str, data: Any) -> Any:
        if isinstance(data, (bytes, bytearray)) and re.sub(r".*[.]", "", key).lower() in extensions:
            try:
                with opened_image(io.BytesIO(data), f"field {key!r}"):
                    pass
            except ImageTooLarge:
                raise
            except Exception:  # noqa: BLE001, S110 - the decoder itself says what is wrong
                pass
        return handler(key, data)

    return decode


def skip_undecodable(error: BaseException) -> bool:
    """The pipeline's decode handler: a sample that cannot be decoded (or whose image
    claims too many pixels) is skipped with a warning naming its shard, sample, field
    and the cause; returns True (go on)."""
    import warnings

    cause = error.__cause__ or error
    reason = " ".join(str(cause).split()) or type(cause).__name__
    url, key, field = (getattr(error, name, None) for name in ("url", "key", "k"))
    where_ = f"shard {url or '?'}, sample {key or '?'!r}" + (f", field {field!r}" if field else "")
    warnings.warn(f"{where_}: skipped, not decodable ({reason[:300]})", stacklevel=2)
    return True


def resize_crop(
    image: Any, target: tuple[int, int], random_crop: bool, rng: random.Random
) -> tuple[torch.Tensor, list[int]]:
    """Resize ``image`` (PIL) so it covers ``target`` (H, W), crop to it; the tensor
    (3, H, W) in [-1, 1] and the crop's ``[top, left]`` in the resized image."""
    from PIL import Image

    th, tw = target
    width, height = image.size
    scale = max(th / height, tw / width)
    rh, rw = max(th, round(height * scale)), max(tw, round(width * scale))
    image = image.resize((rw, rh), Image.Resampling.BICUBIC)
    if random_crop:
        top, left = rng.randint(0, rh - th), rng.randint(0, rw - tw)
    else:
        top, left = (rh - th) // 2, (rw - tw) // 2
    array = np.asarray(image.crop((left, top, left + tw, top + th)), dtype=np.float32)
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1) / 127.5 - 1.0
    return tensor, [top, left]


class ImageCaptionSample:
    """Webdataset mapper: image + caption -> training entries (see module docstring).

    Args:
        size: target ``H`` (square) or ``[H, W]``.
        image_keys: fields tried in order for the image.
        caption_key: the caption field (bytes or str).
        random_crop: random crop position (SDXL training), else centred.
        seed: seed of the crop positions (``None``: from the global ``random``).
    """

    def __init__(
        self,
        size: int | Sequence[int] = 1024,
        image_keys: Sequence[str] = IMAGE_KEYS,
        caption_key: str = "txt",
        random_crop: bool = True,
        seed: int | None = None,
    ):
        self.size = _size(size)
        self.image_keys = tuple(image_keys)
        self.caption_key = caption_key
        self.random_crop = bool(random_crop)
        self.rng = random.Random(seed) if seed is not None else random

    def __call__(self, sample: dict) -> dict:
        image_key = next((k for k in self.image_keys if k in sample), None)
        if image_key is None:
            raise missing_field(sample, "/".join(self.image_keys))
        if self.caption_key not in sample:
            raise missing_field(sample, self.caption_key)
        caption = sample[self.caption_key]
        if isinstance(caption, (bytes, bytearray)):
            caption = caption.decode("utf-8")
        image = _pil(sample[image_key], sample, image_key)
        width, height = image.size
        tensor, crop = resize_crop(image, self.size, self.random_crop, self.rng)
        return {
            "jpg": tensor,
            "txt": str(caption).strip(),
            "original_size_as_tuple": [height, width],
            "crop_coords_top_left": crop,
            "target_size_as_tuple": list(self.size),
            "__key__": sample.get("__key__"),
            "__url__": sample.get("__url__"),
        }
