"""Conditioning batches: the values a conditioner's embedders read, for ``N`` samples,
and the matching unconditional batch."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from einops import repeat

from ..errors import InputError

_SIZE_KEYS = {
    "original_size_as_tuple": ("orig_height", "orig_width"),
    "crop_coords_top_left": ("crop_coords_top", "crop_coords_left"),
    "target_size_as_tuple": ("target_height", "target_width"),
}
_PER_SAMPLE_SCALARS = ("fps_id", "motion_bucket_id", "cond_aug")
_PER_VIDEO_KEYS = ("cond_frames", "cond_frames_without_noise")
_PER_VIDEO_LISTS = ("polars_rad", "azimuths_rad")


def get_unique_embedder_keys_from_conditioner(conditioner: Any) -> list[str]:
    """The distinct ``input_key``/``input_keys`` of a conditioner's embedders, in order."""
    keys: list[str] = []
    for embedder in conditioner.embedders:
        names = getattr(embedder, "input_keys", None) or [embedder.input_key]
        keys.extend(k for k in names if k is not None and k not in keys)
    return keys


def _count(N: int | Sequence[int]) -> tuple[int, list[int]]:
    dims = [int(N)] if isinstance(N, (int, np.integer)) else [int(n) for n in N]
    return math.prod(dims), dims


def _value(value_dict: Mapping[str, Any], key: str, for_key: str) -> Any:
    if key not in value_dict:
        raise InputError(f"get_batch: conditioning key {for_key!r} needs value_dict[{key!r}]")
    return value_dict[key]


def _batch_entry(
    key: str, value_dict: Mapping[str, Any], n: int, dims: list[int], device: Any
) -> Any:
    if key in _SIZE_KEYS:
        row = [_value(value_dict, name, key) for name in _SIZE_KEYS[key]]
        return torch.tensor(row, device=device).repeat(n, 1)
    if key in _PER_SAMPLE_SCALARS:
        return torch.tensor([_value(value_dict, key, key)], device=device).repeat(n)
    if key in _PER_VIDEO_KEYS:
        value = _value(value_dict, key, key).to(device)
        return repeat(value, "1 ... -> b ...", b=dims[0])
    if key in _PER_VIDEO_LISTS:
        return torch.tensor(_value(value_dict, key, key), device=device).repeat(dims[0])
    return _value(value_dict, key, key)


def get_batch(
    keys: Iterable[str],
    value_dict: Mapping[str, Any],
    N: int | Sequence[int],
    T: int | None = None,
    device: torch.device | str = "cpu",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Conditioning batch and unconditional batch for ``prod(N)`` samples.

    ``txt`` takes ``prompt`` (``negative_prompt`` in the unconditional batch); size keys
    take ``(height, width)`` rows; ``aesthetic_score`` takes ``negative_aesthetic_score``
    in the unconditional batch; video keys repeat per frame or per video (``N[0]``);
    other keys are copied. Tensors missing from the unconditional batch are cloned into it.
    ``T`` sets ``num_video_frames``.
    """
    n, dims = _count(N)
    batch: dict[str, Any] = {}
    batch_uc: dict[str, Any] = {}
    for key in keys:
        if key == "txt":
            batch[key] = [str(_value(value_dict, "prompt", key))] * n
            batch_uc[key] = [str(value_dict.get("negative_prompt") or "")] * n
        elif key == "aesthetic_score":
            score = _value(value_dict, "aesthetic_score", key)
            negative = _value(value_dict, "negative_aesthetic_score", key)
            batch[key] = torch.tensor([score], device=device).repeat(n, 1)
            batch_uc[key] = torch.tensor([negative], device=device).repeat(n, 1)
        else:
            batch[key] = _batch_entry(key, value_dict, n, dims, device)
    if T is not None:
        batch["num_video_frames"] = T
    for key, value in batch.items():
        if key not in batch_uc and isinstance(value, torch.Tensor):
            batch_uc[key] = torch.clone(value)
    return batch, batch_uc
