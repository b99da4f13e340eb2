"""Image-to-video sampling (SVD, SVD-XT, SV3D): model loading, preprocessing, conditioning,
sampling and mp4 writing."""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange, repeat

from .. import offload, precision
from ..errors import CheckpointError, ConfigError, InputError
from ..offload import offload_engine
from ..output_files import write_new_file
from .helpers import get_batch, get_unique_embedder_keys_from_conditioner, model_device

logger = logging.getLogger(__name__)

SV3D_FRAMES = 21
SV3D_SIZE = 576
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
) -> torch.nn.Module:
    """Build the ``DiffusionEngine`` of ``config_path`` on ``device`` and load ``ckpt`` strictly.

    The sampler gets ``num_steps`` and ``verbose``; the guider gets ``num_frames``.
    ``dtype`` is the compute precision (``sgm.precision``: auto is fp16 on CUDA, fp32
    elsewhere), kept as the model's ``compute_dtype`` for :func:`sample_video`.
    ``offload`` (low-VRAM mode, ``sgm.offload``) keeps the conditioner, the network and
    the first stage on the host, each moved to ``device`` only while it runs;
    ``half_weights`` stores the network in the half ``dtype`` (default: with
    ``offload`` on an accelerator, as the original's low-VRAM mode).
    """
    from omegaconf import OmegaConf

    from ..checkpoint import load_checkpoint_into
    from ..util import instantiate_from_config, load_configs

    compute_dtype = precision.parse_dtype(dtype, device)
    if half_weights is None:
        half_weights = offload and torch.device(device).type != "cpu"
    half_weights = half_weights and compute_dtype in precision.HALF_DTYPES
    build_on = "cpu" if offload else device
    if ckpt is not None and not Path(ckpt).is_file():
        raise CheckpointError(f"checkpoint not found: {ckpt}")
    config = load_configs([config_path])
    params = config.model.params
    params.ckpt_path = None
    if "sampler_config" not in params or params.sampler_config is None:
        raise ConfigError(f"{config_path}: model.params.sampler_config is required")
    sampler = params.sampler_config.params
    sampler.verbose = verbose
    if num_steps is not None:
        sampler.num_steps = int(num_steps)
    guider = sampler.get("guider_config")
    if guider is not None and num_frames is not None and "Prediction" in str(guider.target):
        OmegaConf.update(guider, "params.num_frames", int(num_frames), force_add=True)
    _set_open_clip_init_device(params, str(build_on))
    with torch.device(build_on):
        model = instantiate_from_config(config.model, key="model")
    if ckpt is not None:
        report = load_checkpoint_into(model, ckpt, strict=True)
        if verbose:
            logger.info("loaded %s: %s", ckpt, report.summary() or "all keys matched")
    model.requires_grad_(False)
    model.compute_dtype = compute_dtype
    if half_weights:
        precision.cast_network(model, compute_dtype)
    if offload:
        offload_engine(model, device)
        return model.eval()
    return model.to(device).eval()


def _set_open_clip_init_device(params: Any, device: str) -> None:
    for emb in params.get("conditioner_config", {}).get("params", {}).get("emb_models", []):
        inner = emb.get("params", {}).get("open_clip_embedding_config")
        if inner is not None and str(inner.get("target", "")).endswith("ImageEmbedder"):
            inner.setdefault("params", {})["init_device"] = device


# --------------------------------------------------------------------------- images


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
    try:
        with Image.open(path) as opened:
            opened.load()
            return opened.copy()
    except OSError as error:
        raise InputError(f"cannot read image {path}: {error}") from None


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
) -> torch.Tensor:
    """Sample ``num_frames`` frames conditioned on ``value_dict``; ``(T, 3, H, W)`` in [0, 1].

    Noise comes from ``generator`` (or a CPU generator seeded with ``seed``), so results
    do not depend on the device's random stream. ``replace_last_with_input`` (SV3D) puts
    the conditioning image as the last frame. ``autocast`` runs sampling in the compute
    precision ``dtype`` (default: the model's ``compute_dtype``, else fp16 on CUDA and
    float32 elsewhere); the first stage keeps float32 when its config says so.
    ``decoding_t`` / ``encoding_t`` frames are decoded / encoded at a time (the model's
    settings are restored afterwards); ``callback`` gets the sampler's per-step dict.
    """
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
    device = model_device(model)
    context = (
        precision.autocast(device, dtype or getattr(model, "compute_dtype", None))
        if autocast
        else contextlib.nullcontext()
    )
    with context, offload.released(model), _chunking(model, encoding_t, decoding_t):
        return _sample_video(
            model, value_dict, num_frames, generator, device, replace_last_with_input, callback
        )


@contextlib.contextmanager
def _chunking(model: Any, encoding_t: int | None, decoding_t: int) -> Iterator[None]:
    """Frames encoded / decoded at a time, restored on the way out."""
    encoders = [
        e
        for e in getattr(model.conditioner, "embedders", [])
        if hasattr(e, "en_and_decode_n_samples_a_time")
    ]
    saved = [e.en_and_decode_n_samples_a_time for e in encoders]
    saved_decode = model.en_and_decode_n_samples_a_time
    try:
        if encoding_t is not None:
            for embedder in encoders:
                embedder.en_and_decode_n_samples_a_time = encoding_t
        model.en_and_decode_n_samples_a_time = decoding_t
        yield
    finally:
        for embedder, value in zip(encoders, saved, strict=True):
            embedder.en_and_decode_n_samples_a_time = value
        model.en_and_decode_n_samples_a_time = saved_decode


def _sample_video(
    model, value_dict, num_frames, generator, device, replace_last_with_input, callback
) -> torch.Tensor:
    image = value_dict["cond_frames_without_noise"]
    _, _, height, width = image.shape
    channels, factor = 4, 8
    batch = build_video_batch(
        get_unique_embedder_keys_from_conditioner(model.conditioner), value_dict, num_frames, device
    )
    c, uc = model.conditioner.get_unconditional_conditioning(
        batch, batch_uc=dict(batch), force_uc_zero_embeddings=list(FORCE_UC_ZERO)
    )
    for cond in (c, uc):
        for key in ("crossattn", "concat"):
            if key in cond:
                cond[key] = rearrange(
                    repeat(cond[key], "b ... -> b t ...", t=num_frames), "b t ... -> (b t) ..."
                )
    shape = (num_frames, channels, height // factor, width // factor)
    noise = torch.randn(shape, generator=generator, device=_gen_device(generator)).to(device)

    def denoiser(x: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
        # one row per video the network sees (the guider may double the batch)
        indicator = torch.zeros(x.shape[0] // num_frames, num_frames, device=x.device)
        return model.denoiser(
            model.model, x, sigma, cond, image_only_indicator=indicator, num_video_frames=num_frames
        )

    callback_kw = {} if callback is None else {"callback": callback}
    latents = model.sampler(denoiser, noise, cond=c, uc=uc, **callback_kw)
    frames = model.decode_first_stage(latents)
    if replace_last_with_input:
        frames[-1:] = image.to(frames)
    return ((frames.float() + 1) / 2).clamp(0, 1)


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
