"""Per-sample transforms for webdataset pipelines: each maps a sample dict to a sample dict."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..config import instantiate_from_config
from ..errors import InputError
from .image_caption import missing_field


def _image_hw(image: Any) -> tuple[int, int]:
    if isinstance(image, torch.Tensor):
        return int(image.shape[-2]), int(image.shape[-1])
    if hasattr(image, "size") and not callable(image.size):
        width, height = image.size
        return int(height), int(width)
    if hasattr(image, "shape"):
        return int(image.shape[0]), int(image.shape[1])
    raise InputError(f"cannot tell the size of an image of type {type(image).__name__}")


def _get(sample: Mapping, key: str) -> Any:
    if key not in sample:
        raise missing_field(sample, key)
    return sample[key]


class TorchVisionImageTransforms:
    """Apply torchvision transforms (given as ``{target, params}`` configs) to ``key``.

    The image size before the transforms is recorded under ``original_size_key``
    as ``[height, width]`` unless the sample already has it.
    """

    def __init__(
        self,
        transforms: Sequence[Any],
        key: str = "jpg",
        original_size_key: str = "original_size_as_tuple",
    ):
        self.key = key
        self.original_size_key = original_size_key
        built = [t if callable(t) else instantiate_from_config(t) for t in transforms]
        self.transforms = built

    def __call__(self, sample: dict) -> dict:
        image = _get(sample, self.key)
        sample.setdefault(self.original_size_key, list(_image_hw(image)))
        for transform in self.transforms:
            image = transform(image)
        sample[self.key] = image
        return sample


class Rescaler:
    """Map a tensor in [0, 1] to [-1, 1] under ``key``."""

    def __init__(self, key: str = "jpg", strict: bool = True):
        self.key = key
        self.strict = strict

    def __call__(self, sample: dict) -> dict:
        x = _get(sample, self.key)
        if not isinstance(x, torch.Tensor):
            raise InputError(
                f"Rescaler expects a tensor under {self.key!r}, got "
                f"{type(x).__name__}; put ToTensor before it"
            )
        if self.strict and x.numel() and (x.min() < 0.0 or x.max() > 1.0):
            raise InputError(
                f"Rescaler expects values in [0, 1] under {self.key!r}, got "
                f"[{float(x.min()):.3f}, {float(x.max()):.3f}]"
            )
        sample[self.key] = x * 2.0 - 1.0
        return sample


class AddOriginalImageSizeAsTupleAndCropToSquare:
    """Crop ``key`` to a square and record the size/crop conditioning.

    ``original_size_as_tuple`` = ``[height, width]`` from the sample's ``h_key`` /
    ``w_key`` (top level or inside ``json``), else the size already recorded, else
    the image's own size; ``crop_coords_top_left`` = ``[top, left]`` of the crop
    (random, or centred with ``random_crop=False``).
    """

    def __init__(
        self,
        h_key: str = "height",
        w_key: str = "width",
        key: str = "jpg",
        random_crop: bool = True,
    ):
        self.h_key, self.w_key, self.key = h_key, w_key, key
        self.random_crop = random_crop

    def _original_size(self, sample: dict, image_hw: tuple[int, int]) -> list[int]:
        for source in (sample, sample.get("json") or {}):
            if isinstance(source, Mapping) and self.h_key in source and self.w_key in source:
                return [int(source[self.h_key]), int(source[self.w_key])]
        return list(sample.get("original_size_as_tuple", image_hw))

    def __call__(self, sample: dict) -> dict:
        image = _get(sample, self.key)
        if not isinstance(image, torch.Tensor):
            raise InputError(f"expected a (C, H, W) tensor under {self.key!r}")
        height, width = _image_hw(image)
        sample["original_size_as_tuple"] = self._original_size(sample, (height, width))
        side = min(height, width)
        if self.random_crop:
            top, left = random.randint(0, height - side), random.randint(0, width - side)
        else:
            top, left = (height - side) // 2, (width - side) // 2
        sample[self.key] = image[..., top : top + side, left : left + side]
        sample["crop_coords_top_left"] = [top, left]
        return sample
