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

from .. import offload
from ..errors import InputError
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


def _encode(model: Any, img: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """``model.encode_first_stage(img)``. With a ``generator``, a posterior sample is drawn
    from the global random generator forked and seeded from ``generator``, so that a seed
    gives the same latents and the caller's global random state is left as it was."""
    if generator is None:
        return model.encode_first_stage(img)
    probe = torch.Generator(device=generator.device)
    probe.set_state(generator.get_state())  # the caller's generator does not advance
    seed = int(torch.randint(2**62, (1,), generator=probe, device=generator.device))
    on_host = img.device.type == "cpu"  # the global CPU generator is always forked
    with torch.random.fork_rng(
        devices=[] if on_host else [img.device], device_type=img.device.type
    ):
        torch.manual_seed(seed)
        return model.encode_first_stage(img)


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
        engine_autocast(model, device, dtype),
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
    A ``seed`` (or ``generator``) fixes everything random, the first stage's posterior
    sample included.
    ``dtype`` and ``callback`` as in :func:`do_sample`.
    """
    device = torch.device(device) if device is not None else model_device(model)
    generator = _generator(device, seed, generator)
    with (
        torch.no_grad(),
        engine_autocast(model, device, dtype),
        model.ema_scope(),
        offload.released(model),
    ):
        _, c, uc = _conditioning(
            model, value_dict, num_samples, force_uc_zero_embeddings or [], device
        )
        for k, v in (additional_kwargs or {}).items():
            c[k] = uc[k] = v
        img = img.to(device)
        z = img if skip_encode else _encode(model, img, generator)
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
