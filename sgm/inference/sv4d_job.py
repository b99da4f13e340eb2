"""What an SV4D or SV4D 2.0 job does around the sampling (the command lines and the demo
page): checks made before any model loads (input video, configs, checkpoints, rembg),
the input frames, the engines, and the output files (one H.264 mp4 per view, written
atomically, never overwriting)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointError, ConfigError, InputError
from . import video_io

logger = logging.getLogger(__name__)

OUTPUT_FPS = 10


# --------------------------------------------------------------------------- checks


def check_checkpoint(path: str | os.PathLike, flag: str = "--ckpt") -> Path:
    """A readable checkpoint at ``path``, or a ``CheckpointError`` saying where it goes."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint not found: {path} (put {path.name} in {path.parent}/ or pass {flag})"
        )
    from ..checkpoint import check_weights_file, safetensors_header

    try:
        check_weights_file(path)
    except CheckpointError as error:
        raise CheckpointError(f"{error}; replace it with the released {path.name}") from None
    if path.suffix.lower() == ".safetensors" and not safetensors_header(path):
        raise CheckpointError(f"{path}: the checkpoint holds no tensors")
    return path


def load_config(path: str | os.PathLike) -> Any:
    """The OmegaConf of ``path`` (a ``ConfigError`` naming it when it does not parse)."""
    from omegaconf import OmegaConf

    from ..config import check_text_file

    check_text_file(path)
    try:
        return OmegaConf.load(path)
    except Exception as error:  # noqa: BLE001  (any parse error: bad file)
        raise ConfigError(f"{path}: not a readable config: {error}") from None


def check_window(config: Any, path: str | os.PathLike, n_time: int, n_view: int) -> None:
    """The config samples windows of ``n_time`` frames x ``n_view`` views."""
    got = (config.get("N_TIME"), config.get("N_VIEW"))
    if got != (n_time, n_view):
        raise ConfigError(
            f"{path}: N_TIME x N_VIEW is {got[0]} x {got[1]}, this model "
            f"samples {n_time} x {n_view}"
        )


def read_input(input_path: str, n_frames: int) -> list[Any]:
    """The first ``n_frames`` frames of the input, padded ping-pong when shorter."""
    frames = video_io.read_frames(input_path, n_frames)
    if len(frames) < n_frames:
        logger.info("input has %d frames; padded ping-pong to %d", len(frames), n_frames)
    return video_io.ping_pong(frames, n_frames)


def prepare_input(
    frames: Sequence[Any], img_size: int, image_frame_ratio: float | None, remove_bg: bool
) -> np.ndarray:
    """Background removed (optionally), object-centred square crop on white."""
    if remove_bg:
        frames = video_io.remove_background(frames)
    return video_io.preprocess_frames(frames, img_size, image_frame_ratio)


def check_inputs(args: Any) -> None:
    """Checks every SV4D script makes before loading a model."""
    if args.remove_bg:
        video_io.check_background_removal()
    if args.input_path is None:
        raise InputError("input_path is required")
    video_io.check_video_path(args.input_path)


# --------------------------------------------------------------------------- outputs


def free_base(folder: Path, suffixes: Sequence[str], per_run: int) -> int:
    """The first run number ``n >= #mp4 // per_run`` for which no ``{n:06d}{suffix}``
    exists (the original numbers runs by counting the folder's mp4 files)."""
    count = len(list(folder.glob("*.mp4"))) if folder.is_dir() else 0
    base = count // per_run
    while any((folder / f"{base:06d}{s}").exists() for s in suffixes):
        base += 1
    return base


def write_videos(folder: Path, videos: dict[str, Any], per_run: int) -> list[Path]:
    """Write ``{suffix: (T, 3, H, W) frames in [0, 1]}`` as ``{base:06d}{suffix}`` mp4s
    at 10 fps; each file appears complete or not at all, none is overwritten."""
    from .video import save_video

    base = free_base(folder, list(videos), per_run)
    written = []
    for suffix, frames in videos.items():
        written.append(save_video(frames, folder / f"{base:06d}{suffix}", fps=OUTPUT_FPS))
        logger.info("wrote %s", written[-1])
    return written


def uint8_video(frames: np.ndarray) -> Any:
    """``(T, H, W, 3)`` uint8 -> ``(T, 3, H, W)`` in [0, 1] (written back exactly)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255


def load_engine(
    config: Path, ckpt: Path, args: Any, num_frames: int, half: bool, lora: bool = False
) -> Any:
    """Build and load an engine with the command line's device, dtype, low-VRAM mode and
    --compile; ``half`` stores the network in the half compute dtype on an accelerator
    (the original's SV4D script halves its network); ``lora`` applies the --lora
    adapters."""
    from .video import load_video_model

    return load_video_model(
        config,
        ckpt,
        device=args.device,
        num_frames=num_frames,
        num_steps=args.num_steps,
        verbose=args.verbose,
        dtype=args.dtype,
        offload=args.low_vram,
        half_weights=True if half and str(args.device) != "cpu" else None,
        lora=args.lora if lora else (),
        compile_model=args.compile,
    )


def release(model: Any) -> None:
    """Drop a model and give its accelerator memory back."""
    import gc

    import torch

    model.to("cpu")
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
