"""Image-to-video sampling (SVD, SVD-XT, SV3D): model loading, preprocessing, conditioning,
sampling and mp4 writing."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import load_configs
from ..errors import ConfigError, InputError
from ..models.engine_run import EngineRun, to_unit
from ..modules.diffusionmodules.deepcache import DeepCache
from ..modules.token_merging import TokenMerging
from ..output_files import write_new_file
from .batch import get_batch, get_unique_embedder_keys_from_conditioner
from .engines import check_checkpoint, load_engine
from .samplers import make_sampler
from .video_images import (  # noqa: F401  (importable from here)
    SV3D_SIZE,
    prepare_sv3d_image,
    prepare_svd_image,
)

logger = logging.getLogger(__name__)

SV3D_FRAMES = 21
FORCE_UC_ZERO = ("cond_frames", "cond_frames_without_noise")


# --------------------------------------------------------------------------- model


def load_video_model(
    config_path: str | os.PathLike,
    ckpt: str | os.PathLike | None,
    device: str | torch.device = "cpu",
    num_frames: int | None = None,
    num_steps: int | None = None,
    verbose: bool = False,
    dtype: str | torch.dtype | None = "auto",
    offload: bool = False,
    half_weights: bool | None = None,
    lora: Sequence[tuple[str | os.PathLike, float]] = (),
    compile_model: bool = False,
) -> torch.nn.Module:
    """Build the ``DiffusionEngine`` of ``config_path`` on ``device`` and load ``ckpt`` strictly.

    The sampler gets ``num_steps`` and ``verbose``; the guider gets ``num_frames``.
    ``dtype`` is the compute precision (``sgm.precision``: auto is fp16 on CUDA, fp32
    elsewhere), kept as the model's ``compute_dtype`` for :func:`sample_video`.
    ``offload`` (low-VRAM mode, ``sgm.offload``) keeps the conditioner, the network and
    the first stage on the host, each moved to ``device`` only while it runs;
    ``half_weights`` stores the network in the half ``dtype`` (default: with
    ``offload`` on an accelerator, as the original's low-VRAM mode); ``lora``:
    ``(path, scale)`` adapters applied after the base weights; ``compile_model`` compiles the
    network and the VAE decoder (``engines.compile_engine``).
    """
    if ckpt is not None:
        check_checkpoint(ckpt)
    if half_weights is None:
        half_weights = offload and torch.device(device).type != "cpu"
    build_on = "cpu" if offload else device
    config = load_configs([config_path])
    params = config.model.params
    params.ckpt_path = None
    if "sampler_config" not in params or params.sampler_config is None:
        raise ConfigError(f"{config_path}: model.params.sampler_config is required")
    sampler_config, params.sampler_config = params.sampler_config, None  # made below
    guider = sampler_config.get("params", {}).get("guider_config")
    per_frame = guider is not None and "Prediction" in str(guider.get("target"))
    with torch.device(build_on):  # where the engine's own parts are made
        sampler = make_sampler(
            sampler_config,
            num_steps=num_steps,
            verbose=verbose,
            guider_params={"num_frames": int(num_frames)}
            if per_frame and num_frames is not None
            else None,
        )
    _set_open_clip_init_device(params, str(build_on))
    model = load_engine(
        config,
        ckpt,
        device,
        dtype=dtype,
        half_weights=half_weights,
        offload_weights=offload,
        lora=lora,
        compile_model=compile_model,
        build_on=build_on,
        verbose=verbose,
    )
    model.sampler = sampler
    return model


def _set_open_clip_init_device(params: Any, device: str) -> None:
    for emb in params.get("conditioner_config", {}).get("params", {}).get("emb_models", []):
        inner = emb.get("params", {}).get("open_clip_embedding_config")
        if inner is not None and str(inner.get("target", "")).endswith("ImageEmbedder"):
            inner.setdefault("params", {})["init_device"] = device


# --------------------------------------------------------------------------- conditioning


def sv3d_orbit(
    num_frames: int = SV3D_FRAMES,
    elevations_deg: float | Sequence[float] | None = 10.0,
    azimuths_deg: Sequence[float] | None = None,
) -> tuple[list[float], list[float]]:
    """SV3D_p camera values in radians: polars ``90 - elev`` and azimuths relative to the
    last frame (the input view), default a full circle ending at 0."""
    if elevations_deg is None:
        elevations_deg = 10.0
    if isinstance(elevations_deg, (int, float)):
        elevations_deg = [float(elevations_deg)] * num_frames
    if azimuths_deg is None:
        azimuths_deg = (np.linspace(0, 360, num_frames + 1)[1:] % 360).tolist()
    elevations_deg, azimuths_deg = list(elevations_deg), list(azimuths_deg)
    for name, values in (("elevations_deg", elevations_deg), ("azimuths_deg", azimuths_deg)):
        if len(values) != num_frames:
            raise InputError(f"{name} needs {num_frames} values, got {len(values)}")
    polars = [math.radians(90 - e) for e in elevations_deg]
    last = azimuths_deg[-1]
    azimuths = [math.radians((a - last) % 360) for a in azimuths_deg]
    return polars, azimuths


def build_value_dict(
    image: torch.Tensor,
    cond_aug: float,
    fps_id: int = 6,
    motion_bucket_id: int = 127,
    generator: torch.Generator | None = None,
    polars_rad: Sequence[float] | None = None,
    azimuths_rad: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Conditioning values: the image, the image plus ``cond_aug`` noise, and the scalars."""
    noise = torch.randn(image.shape, generator=generator, device=_gen_device(generator))
    values = {
        "cond_frames_without_noise": image,
        "cond_frames": image + cond_aug * noise.to(image),
        "fps_id": fps_id,
        "motion_bucket_id": motion_bucket_id,
        "cond_aug": cond_aug,
    }
    if polars_rad is not None:
        values["polars_rad"] = list(polars_rad)
    if azimuths_rad is not None:
        values["azimuths_rad"] = list(azimuths_rad)
    return values


def _gen_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def build_video_batch(
    keys: Sequence[str], values: Mapping[str, Any], num_frames: int, device: torch.device
) -> dict[str, Any]:
    """Batch for the conditioner: scalars repeated per frame, images kept as one sample."""
    return get_batch(keys, values, [1, num_frames], device=device)[0]


# --------------------------------------------------------------------------- sampling


@torch.no_grad()
def sample_video(
    model: torch.nn.Module,
    value_dict: Mapping[str, Any],
    num_frames: int,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    decoding_t: int = 14,
    replace_last_with_input: bool = False,
    autocast: bool = True,
    dtype: str | torch.dtype | None = None,
    callback: Callable[[dict], Any] | None = None,
    encoding_t: int | None = None,
    deepcache: DeepCache | None = None,
    tome: TokenMerging | None = None,
) -> torch.Tensor:
    """Sample ``num_frames`` frames conditioned on ``value_dict``; ``(T, 3, H, W)`` in [0, 1].

    Noise comes from ``generator`` (or a CPU generator seeded with ``seed``), so results
    do not depend on the device's random stream. ``replace_last_with_input`` (SV3D) puts
    the conditioning image as the last frame. ``autocast`` runs sampling in the compute
    precision ``dtype`` (default: the model's ``compute_dtype``, else fp16 on CUDA and
    float32 elsewhere); the first stage keeps float32 when its config says so.
    ``decoding_t`` / ``encoding_t`` frames are decoded / encoded at a time (the model's
    settings are restored afterwards); ``callback`` gets the sampler's per-step dict;
    ``deepcache`` reuses the network's deep features between steps (``DeepCache``),
    ``tome`` merges tokens in its spatial transformer blocks (``TokenMerging``).
    """
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
    with EngineRun(
        model,
        dtype=dtype,
        autocast=autocast,
        ema=False,
        decoding_t=decoding_t,
        encoding_t=encoding_t,
        deepcache=deepcache,
        tome=tome,
    ) as run:
        return _sample_video(
            run, value_dict, num_frames, generator, replace_last_with_input, callback
        )


def _sample_video(
    run: EngineRun, value_dict, num_frames, generator, replace_last_with_input, callback
) -> torch.Tensor:
    image = value_dict["cond_frames_without_noise"]
    _, _, height, width = image.shape
    channels, factor = 4, 8
    keys = get_unique_embedder_keys_from_conditioner(run.engine.conditioner)
    batch = build_video_batch(keys, value_dict, num_frames, run.device)
    c, uc = run.condition(
        batch, dict(batch), FORCE_UC_ZERO, repeat_per_frame=(num_frames, ("crossattn", "concat"))
    )
    shape = (num_frames, channels, height // factor, width // factor)
    noise = torch.randn(shape, generator=generator, device=_gen_device(generator))
    # the sampler's own noise (churn) comes from the global stream, as in the original
    latents = run.sample(
        run.engine.sampler, noise, c, uc, denoiser=run.video_denoiser(num_frames), callback=callback
    )
    frames = run.decode(latents)
    if replace_last_with_input:
        frames[-1:] = image.to(frames)
    return to_unit(frames.float())


# --------------------------------------------------------------------------- output


def save_video(frames: torch.Tensor, path: str | os.PathLike, fps: float) -> Path:
    """Write ``(T, 3, H, W)`` frames in [0, 1] to an H.264 (yuv420p) mp4 at ``fps``.

    Written to a temporary file, then linked into place; an existing ``path`` is never
    overwritten (FileExistsError).
    """
    import imageio_ffmpeg

    path = Path(path)
    if path.exists():
        raise FileExistsError(f"refusing to overwrite {path}")
    if frames.dim() != 4 or frames.shape[1] != 3:
        raise InputError(f"expected (T, 3, H, W) frames, got {tuple(frames.shape)}")
    height, width = frames.shape[-2:]
    if height % 2 or width % 2:
        raise InputError(f"yuv420p needs even frame sizes, got {width}x{height}")
    data = (frames.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    data = data.permute(0, 2, 3, 1).contiguous().cpu().numpy()

    def write(tmp: str) -> None:
        writer = imageio_ffmpeg.write_frames(
            tmp,
            (int(width), int(height)),
            fps=float(fps),
            codec="libx264",
            pix_fmt_out="yuv420p",
            macro_block_size=1,
            ffmpeg_log_level="error",
        )
        writer.send(None)
        for frame in data:
            writer.send(np.ascontiguousarray(frame))
        writer.close()

    return write_new_file(write, [path])
