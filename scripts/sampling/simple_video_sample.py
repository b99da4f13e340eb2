"""Image-to-video sampling with SVD / SVD-XT / SV3D.

    python scripts/sampling/simple_video_sample.py --input_path=image.png --version=svd_xt

Writes ``{count:06d}.mp4`` (and the processed input as ``{count:06d}.jpg``) to
``outputs/simple_video_sample/<version>/``; existing files are never overwritten.
"""

from __future__ import annotations

import sgm  # noqa: F401  (first: sets up imports before the heavy packages)

import logging
import sys
from pathlib import Path
from collections.abc import Sequence
from typing import Any

from sgm.errors import CheckpointError, ConfigError, InputError

logger = logging.getLogger("simple_video_sample")

CONFIGS = Path(__file__).resolve().parent / "configs"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
VERSIONS = {
    # version: (frames, steps)
    "svd": (14, 25),
    "svd_xt": (25, 30),
    "svd_xt_1_1": (25, 30),
    "svd_image_decoder": (14, 25),
    "svd_xt_image_decoder": (25, 30),
    "sv3d_u": (21, 50),
    "sv3d_p": (21, 50),
}


def _inputs(input_path: str) -> list[Path]:
    path = Path(input_path)
    if path.is_file():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise InputError(f"input {path} is not a {'/'.join(IMAGE_SUFFIXES)} image")
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InputError(f"folder {path} holds no {'/'.join(IMAGE_SUFFIXES)} images")
        return files
    raise InputError(f"input_path not found: {path}")


def _check_args(version: str, fps_id: int, motion_bucket_id: int) -> None:
    if version not in VERSIONS:
        raise InputError(f"unknown version {version!r}; choose one of {', '.join(VERSIONS)}")
    if motion_bucket_id > 255:
        logger.warning("motion_bucket_id %s is above 255, the trained range", motion_bucket_id)
    if fps_id < 5 or fps_id > 30:
        logger.warning("fps_id %s is outside 5..30, the trained range", fps_id)


def _next_stem(folder: Path) -> str:
    count = len(list(folder.glob("*.mp4")))
    while (folder / f"{count:06d}.mp4").exists() or (folder / f"{count:06d}.jpg").exists():
        count += 1
    return f"{count:06d}"


def _save_input(image: Any, path: Path) -> None:
    from PIL import Image

    array = ((image[0].permute(1, 2, 0).cpu().float() + 1) * 127.5).round().clamp(0, 255)
    Image.fromarray(array.byte().numpy()).save(path)


def sample(
    input_path: str = "assets/test_image.png",
    num_frames: int | None = None,
    num_steps: int | None = None,
    version: str = "svd",
    fps_id: int = 6,
    motion_bucket_id: int = 127,
    cond_aug: float = 0.02,
    seed: int = 23,
    decoding_t: int = 14,
    device: str = "auto",
    output_folder: str | None = None,
    elevations_deg: float | Sequence[float] | None = 10.0,
    azimuths_deg: Sequence[float] | None = None,
    image_frame_ratio: float | None = None,
    verbose: bool = False,
    config: str | None = None,
    ckpt: str | None = None,
) -> list[str]:
    """Sample a video for each input image; returns the written mp4 paths."""
    import torch

    from sgm.inference.video import (build_value_dict, load_video_model, prepare_sv3d_image,
                                     prepare_svd_image, sample_video, save_video, sv3d_orbit)
    from sgm.util import resolve_device

    _check_args(version, fps_id, motion_bucket_id)
    frames_default, steps_default = VERSIONS[version]
    sv3d = version.startswith("sv3d")
    if sv3d:
        if num_frames not in (None, frames_default):
            logger.warning("%s always samples %d frames", version, frames_default)
        num_frames, cond_aug = frames_default, 1e-5
    num_frames = int(num_frames or frames_default)
    num_steps = int(num_steps or steps_default)
    config = Path(config) if config else CONFIGS / f"{version}.yaml"
    ckpt = Path(ckpt) if ckpt else Path("checkpoints") / f"{version}.safetensors"
    if not ckpt.is_file():
        raise CheckpointError(f"checkpoint not found: expected {ckpt} "
                              f"(download {ckpt.name} into checkpoints/ or pass --ckpt)")
    inputs = _inputs(input_path)
    polars = azimuths = None
    if version == "sv3d_p":
        polars, azimuths = sv3d_orbit(num_frames, elevations_deg, azimuths_deg)
    device = resolve_device(device)
    model = load_video_model(config, ckpt, device, num_frames, num_steps, verbose)
    folder = Path(output_folder or Path("outputs/simple_video_sample") / version)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for path in inputs:
        image = prepare_sv3d_image(path, image_frame_ratio) if sv3d else prepare_svd_image(path)
        generator = torch.Generator().manual_seed(int(seed))
        values = build_value_dict(image, cond_aug, fps_id, motion_bucket_id, generator,
                                  polars, azimuths)
        frames = sample_video(model, values, num_frames, generator=generator,
                              decoding_t=decoding_t, replace_last_with_input=sv3d)
        frames = _watermark(frames)
        stem = _next_stem(folder)
        _save_input(image, folder / f"{stem}.jpg")
        written.append(str(save_video(frames, folder / f"{stem}.mp4", fps=fps_id + 1)))
        logger.info("wrote %s", written[-1])
    return written


def _watermark(frames: Any) -> Any:
    from sgm.inference.watermark import WATERMARK_BITS, WatermarkEmbedder

    try:
        return WatermarkEmbedder(WATERMARK_BITS)(frames)
    except ImportError as error:
        logger.warning("%s; frames are not watermarked", error)
        return frames


def main(argv: list[str] | None = None) -> int:
    """Fire entry point; user errors print one line and return exit code 2."""
    import fire

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        fire.Fire(sample, command=argv, serialize=lambda paths: "\n".join(paths))
    except (InputError, CheckpointError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
