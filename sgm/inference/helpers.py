"""Sampling helpers shared by the inference API and the sampling scripts.

Batches of conditioning values (``get_batch``, from ``sgm.inference.batch``), text-to-image and image-to-image
sampling loops (``do_sample``, ``do_img2img``), a discretization wrapper for img2img
strength, and saving samples as watermarked PNGs (``perform_save_locally``).
Devices follow the model; nothing here names a device type.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from einops import rearrange

from ..errors import InputError
from ..models.engine_run import EngineRun, to_unit
from ..modules.diffusionmodules.deepcache import DeepCache
from ..modules.diffusionmodules.tgate import TGate
from ..modules.token_merging import TokenMerging
from ..output_files import write_new_file
from ..util import append_dims
from .batch import (  # noqa: F401  (importable from here)
    get_batch,
    get_unique_embedder_keys_from_conditioner,
)
from .engines import engine_autocast, model_device  # noqa: F401  (importable from here)
from .watermark import (  # noqa: F401  (importable from here, as in the original)
    WATERMARK_BITS,
    WATERMARK_MESSAGE,
    WatermarkEmbedder,
)

logger = logging.getLogger(__name__)

_WATERMARKER: Any = None


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


def _encode(model: Any, img: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """``model.encode_first_stage(img)``, seeded from ``generator`` (``EngineRun.encode``)."""
    return EngineRun(model, img.device).encode(img, generator)


def _conditioning(run: EngineRun, value_dict, num_samples, force_uc_zero_embeddings):
    keys = get_unique_embedder_keys_from_conditioner(run.engine.conditioner)
    batch, batch_uc = get_batch(keys, value_dict, [num_samples], device=run.device)
    c, uc = run.condition(batch, batch_uc, force_uc_zero_embeddings or (), num=num_samples)
    return batch, c, uc


def _finish(run: EngineRun, samples_z, filter, return_latents):
    samples = to_unit(run.decode(samples_z))
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
    deepcache: DeepCache | None = None,
    tome: TokenMerging | None = None,
    tgate: TGate | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Sample ``num_samples`` images of ``H x W`` from noise; returns them in [0, 1].

    The device defaults to the model's; ``seed`` (or ``generator``) makes the start
    noise and the sampler's noise reproducible. ``noise`` gives the unit start noise
    ``(num_samples, C, H // F, W // F)`` instead. ``dtype`` is the compute precision
    (``sgm.precision``); ``callback`` gets the sampler's per-step dictionary;
    ``deepcache`` reuses the network's deep features between steps (``DeepCache``),
    ``tome`` merges tokens in its transformer blocks (``TokenMerging``), ``tgate``
    stops recomputing attention after its gate step (``TGate``).
    """
    device = torch.device(device) if device is not None else model_device(model)
    generator = _generator(device, seed, generator)
    shape = (num_samples, C, H // F, W // F)
    if noise is not None and tuple(noise.shape) != shape:
        raise InputError(f"do_sample: noise must have shape {shape}, got {tuple(noise.shape)}")
    with EngineRun(model, device, dtype, deepcache=deepcache, tome=tome, tgate=tgate) as run:
        batch, c, uc = _conditioning(run, value_dict, num_samples, force_uc_zero_embeddings)
        extra = {k: batch[k] for k in (batch2model_input or [])}
        randn = _randn(shape, device, generator) if noise is None else noise.to(device)
        samples_z = run.sample(
            sampler,
            randn,
            c,
            uc,
            denoiser=run.denoiser(**extra),
            generator=generator,
            callback=callback,
        )
        return _finish(run, samples_z, filter, return_latents)


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
    deepcache: DeepCache | None = None,
    tome: TokenMerging | None = None,
    tgate: TGate | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Noise ``img`` (or its latents with ``skip_encode``) to the first sigma and denoise.

    ``add_noise=False`` takes latents that already hold the first sigma's noise (a base
    model stopped by :class:`Txt2NoisyDiscretizationWrapper`) and only denoises them.
    A ``seed`` (or ``generator``) fixes everything random, the first stage's posterior
    sample included.
    ``dtype``, ``callback``, ``deepcache``, ``tome`` and ``tgate`` as in :func:`do_sample`.
    """
    device = torch.device(device) if device is not None else model_device(model)
    generator = _generator(device, seed, generator)
    with EngineRun(model, device, dtype, deepcache=deepcache, tome=tome, tgate=tgate) as run:
        _, c, uc = _conditioning(run, value_dict, num_samples, force_uc_zero_embeddings)
        for k, v in (additional_kwargs or {}).items():
            c[k] = uc[k] = v
        img = img.to(device)
        z = img if skip_encode else run.encode(img, generator)
        noise = _randn(z.shape, z.device, generator)
        sigmas = sampler.discretization(sampler.num_steps, device=z.device)
        sigma = sigmas[0]
        if offset_noise_level > 0.0:
            offset = _randn((z.shape[0],), z.device, generator)
            noise = noise + offset_noise_level * append_dims(offset, z.ndim)
        if add_noise:
            z = z + noise * sigma
        noised_z = z / torch.sqrt(1.0 + sigma**2.0)
        samples_z = run.sample(sampler, noised_z, c, uc, generator=generator, callback=callback)
        return _finish(run, samples_z, filter, return_latents)


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
