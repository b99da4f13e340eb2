"""Sampling helpers shared by the inference API and the sampling scripts.

Batches of conditioning values (``get_batch``), text-to-image and image-to-image
sampling loops (``do_sample``, ``do_img2img``), a discretization wrapper for img2img
strength, and saving samples as watermarked PNGs (``perform_save_locally``).
Devices follow the model; nothing here names a device type.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from einops import rearrange, repeat

from .. import offload, precision
from ..errors import InputError
from ..output_files import write_new_file
from ..util import append_dims
from .watermark import (  # noqa: F401  (importable from here, as in the original)
    WATERMARK_BITS,
    WATERMARK_MESSAGE,
    WatermarkEmbedder,
)

logger = logging.getLogger(__name__)

_SIZE_KEYS = {
    "original_size_as_tuple": ("orig_height", "orig_width"),
    "crop_coords_top_left": ("crop_coords_top", "crop_coords_left"),
    "target_size_as_tuple": ("target_height", "target_width"),
}
_PER_SAMPLE_SCALARS = ("fps_id", "motion_bucket_id", "cond_aug")
_PER_VIDEO_KEYS = ("cond_frames", "cond_frames_without_noise")
_PER_VIDEO_LISTS = ("polars_rad", "azimuths_rad")

_WATERMARKER: Any = None


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


class Img2ImgDiscretizationWrapper:
    """Keeps the lowest ``strength`` fraction of a discretization's sigmas (at least one)."""

    def __init__(self, discretization: Callable[..., torch.Tensor], strength: float = 1.0):
        if not 0.0 <= float(strength) <= 1.0:
            raise InputError(f"img2img strength must be in [0, 1], got {strength!r}")
        self.discretization = discretization
        self.strength = float(strength)

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        sigmas = torch.flip(self.discretization(*args, **kwargs), (0,))
        sigmas = sigmas[: max(int(self.strength * len(sigmas)), 1)]
        return torch.flip(sigmas, (0,))


class Txt2NoisyDiscretizationWrapper:
    """Stops a discretization early, where a second model (the refiner) takes over.

    The base model samples only down to the noise level at which an
    :class:`Img2ImgDiscretizationWrapper` of the same ``strength`` over ``original_steps``
    steps starts, so its output latents still hold that much noise and the refiner
    finishes them (``do_img2img(..., add_noise=False)``). ``strength=0`` keeps the whole
    schedule; ``original_steps`` defaults to the number of steps asked for.
    """

    def __init__(
        self,
        discretization: Callable[..., torch.Tensor],
        strength: float = 0.0,
        original_steps: int | None = None,
    ):
        if not 0.0 <= float(strength) <= 1.0:
            raise InputError(f"refiner strength must be in [0, 1], got {strength!r}")
        self.discretization = discretization
        self.strength = float(strength)
        self.original_steps = original_steps

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        ascending = torch.flip(self.discretization(*args, **kwargs), (0,))
        count = len(ascending) if self.original_steps is None else self.original_steps + 1
        # the refiner's first sigma is ascending[int(strength * count) - 1]
        first_kept = min(max(int(self.strength * count) - 1, 0), count - 1)
        return torch.flip(ascending[first_kept:], (0,))


def model_device(model: torch.nn.Module) -> torch.device:
    """The device a model runs on: its offloader's (``sgm.offload``) if it has one, else
    that of its first parameter or buffer (cpu if it has none)."""
    offloaded = offload.execution_device(model)
    if offloaded is not None:
        return offloaded
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def _autocast(model: Any, device: torch.device, dtype: Any) -> contextlib.AbstractContextManager:
    """Autocast in ``dtype``, else the model's ``compute_dtype``, else the device's default
    (``sgm.precision``: fp16 on CUDA, none elsewhere)."""
    return precision.autocast(device, dtype or getattr(model, "compute_dtype", None))


def _callback_kw(callback: Callable[[dict], Any] | None) -> dict[str, Any]:
    return {} if callback is None else {"callback": callback}


def _generator(
    device: torch.device, seed: int | None, generator: torch.Generator | None
) -> torch.Generator | None:
    if generator is not None:
        return generator
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(int(seed))


def _randn(shape: Sequence[int], device: torch.device, generator: torch.Generator | None):
    if generator is None:
        return torch.randn(tuple(shape)).to(device)
    return torch.randn(tuple(shape), generator=generator, device=generator.device).to(device)


def _conditioning(model, value_dict, num_samples, force_uc_zero_embeddings, device):
    keys = get_unique_embedder_keys_from_conditioner(model.conditioner)
    batch, batch_uc = get_batch(keys, value_dict, [num_samples], device=device)
    c, uc = model.conditioner.get_unconditional_conditioning(
        batch, batch_uc=batch_uc, force_uc_zero_embeddings=force_uc_zero_embeddings
    )
    for k in c:
        if k != "crossattn":
            c[k], uc[k] = (y[k][:num_samples].to(device) for y in (c, uc))
    return batch, c, uc


def _finish(model, samples_z, filter, return_latents):
    samples_x = model.decode_first_stage(samples_z)
    samples = torch.clamp((samples_x + 1.0) / 2.0, min=0.0, max=1.0)
    if filter is not None:
        samples = filter(samples)
    return (samples, samples_z) if return_latents else samples


def do_sample(
    model: Any,
    sampler: Any,
    value_dict: Mapping[str, Any],
    num_samples: int,
    H: int,
    W: int,
    C: int,
    F: int,
    force_uc_zero_embeddings: Sequence[str] | None = None,
    batch2model_input: Sequence[str] | None = None,
    return_latents: bool = False,
    filter: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: torch.device | str | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    dtype: torch.dtype | str | None = None,
    callback: Callable[[dict], Any] | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Sample ``num_samples`` images of ``H x W`` from noise; returns them in [0, 1].

    The device defaults to the model's; ``seed`` (or ``generator``) makes the start
    noise and the sampler's noise reproducible. ``noise`` gives the unit start noise
    ``(num_samples, C, H // F, W // F)`` instead. ``dtype`` is the compute precision
    (``sgm.precision``); ``callback`` gets the sampler's per-step dictionary.
    """
    device = torch.device(device) if device is not None else model_device(model)
    generator = _generator(device, seed, generator)
    with (
        torch.no_grad(),
        _autocast(model, device, dtype),
        model.ema_scope(),
        offload.released(model),
    ):
        batch, c, uc = _conditioning(
            model, value_dict, num_samples, force_uc_zero_embeddings, device
        )
        extra = {k: batch[k] for k in (batch2model_input or [])}
        shape = (num_samples, C, H // F, W // F)
        if noise is None:
            randn = _randn(shape, device, generator)
        elif tuple(noise.shape) != shape:
            raise InputError(f"do_sample: noise must have shape {shape}, got {tuple(noise.shape)}")
        else:
            randn = noise.to(device)

        def denoiser(x: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
            return model.denoiser(model.model, x, sigma, cond, **extra)

        samples_z = sampler(
            denoiser, randn, cond=c, uc=uc, generator=generator, **_callback_kw(callback)
        )
        return _finish(model, samples_z, filter, return_latents)


def do_img2img(
    img: torch.Tensor,
    model: Any,
    sampler: Any,
    value_dict: Mapping[str, Any],
    num_samples: int,
    force_uc_zero_embeddings: Sequence[str] | None = None,
    additional_kwargs: Mapping[str, Any] | None = None,
    offset_noise_level: float = 0.0,
    return_latents: bool = False,
    skip_encode: bool = False,
    filter: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: torch.device | str | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    add_noise: bool = True,
    dtype: torch.dtype | str | None = None,
    callback: Callable[[dict], Any] | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Noise ``img`` (or its latents with ``skip_encode``) to the first sigma and denoise.

    ``add_noise=False`` takes latents that already hold the first sigma's noise (a base
    model stopped by :class:`Txt2NoisyDiscretizationWrapper`) and only denoises them.
    ``dtype`` and ``callback`` as in :func:`do_sample`.
    """
    device = torch.device(device) if device is not None else model_device(model)
    generator = _generator(device, seed, generator)
    with (
        torch.no_grad(),
        _autocast(model, device, dtype),
        model.ema_scope(),
        offload.released(model),
    ):
        _, c, uc = _conditioning(
            model, value_dict, num_samples, force_uc_zero_embeddings or [], device
        )
        for k, v in (additional_kwargs or {}).items():
            c[k] = uc[k] = v
        img = img.to(device)
        z = img if skip_encode else model.encode_first_stage(img)
        noise = _randn(z.shape, z.device, generator)
        sigmas = sampler.discretization(sampler.num_steps, device=z.device)
        sigma = sigmas[0]
        if offset_noise_level > 0.0:
            offset = _randn((z.shape[0],), z.device, generator)
            noise = noise + offset_noise_level * append_dims(offset, z.ndim)
        if add_noise:
            z = z + noise * sigma
        noised_z = z / torch.sqrt(1.0 + sigma**2.0)

        def denoiser(x: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
            return model.denoiser(model.model, x, sigma, cond)

        samples_z = sampler(
            denoiser, noised_z, cond=c, uc=uc, generator=generator, **_callback_kw(callback)
        )
        return _finish(model, samples_z, filter, return_latents)


def get_input_image_tensor(image: Any, device: torch.device | str = "cpu") -> torch.Tensor:
    """A PIL image as a ``(1, 3, H, W)`` tensor in [-1, 1], sides cut to multiples of 64."""
    image = image.convert("RGB")
    w, h = image.size
    width, height = (x - x % 64 for x in (w, h))
    if width == 0 or height == 0:
        raise InputError(f"input image of size {w}x{h} is smaller than 64 pixels on a side")
    image = image.resize((width, height))
    array = np.asarray(image, dtype=np.float32).transpose(2, 0, 1)[None] / 255.0
    return (torch.from_numpy(array.copy()) * 2.0 - 1.0).to(device)


def embed_watermark(samples: torch.Tensor) -> torch.Tensor:
    """Embed the invisible sgm watermark into ``([N,] B, 3, H, W)`` images in [0, 1]."""
    global _WATERMARKER
    if _WATERMARKER is None:
        from .watermark import WATERMARK_BITS, WatermarkEmbedder

        _WATERMARKER = WatermarkEmbedder(WATERMARK_BITS)
    return _WATERMARKER(samples)


def perform_save_locally(
    save_path: str | os.PathLike,
    samples: torch.Tensor,
    watermark: bool = True,
    metadata: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
) -> list[str]:
    """Save ``(B, 3, H, W)`` images in [0, 1] as ``{count:09}.png``; returns the paths.

    Each file is written to a temporary name and then moved into place; existing
    files are never overwritten. ``watermark`` embeds the invisible watermark first.
    ``metadata`` (one mapping for all images, or one per image) is stored as PNG text
    chunks, values as strings.
    """
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    if metadata is None or isinstance(metadata, Mapping):
        metadata = [metadata or {}] * len(samples)
    if len(metadata) != len(samples):
        raise InputError(f"{len(metadata)} metadata entries for {len(samples)} images")

    save_path = os.fspath(save_path)
    os.makedirs(save_path, exist_ok=True)
    if watermark:
        samples = embed_watermark(samples)
    count = len(os.listdir(save_path))
    paths = []
    for sample, text in zip(samples, metadata):
        array = 255.0 * rearrange(sample.float().cpu().numpy(), "c h w -> h w c")
        image = Image.fromarray(np.clip(np.round(array), 0, 255).astype(np.uint8))
        info = PngInfo()
        for key, value in text.items():
            info.add_text(str(key), str(value))
        names = (os.path.join(save_path, f"{n:09}.png") for n in itertools.count(count))
        path = write_new_file(
            lambda tmp, image=image, info=info: image.save(tmp, format="PNG", pnginfo=info),
            names,
        )
        count = int(path.stem) + 1
        paths.append(str(path))
    return paths
