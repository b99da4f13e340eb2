"""Image-to-video sampling with SVD / SVD-XT / SV3D.

    python scripts/sampling/simple_video_sample.py --input_path=image.png --version=svd_xt
    sgm-sample-video --input_path=image.png --version=svd_xt      # the same, installed

Writes ``{count:06d}.mp4`` (and the processed input as ``{count:06d}.jpg``) to
``outputs/simple_video_sample/<version>/``; existing files are never overwritten.
"""

from __future__ import annotations

import argparse
import glob
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import cli
from .. import values as checks
from ..assets import example_input
from ..checkpoint_files import check_model_files
from ..errors import CheckpointError, InputError
from ..inference.releases import checkpoint_path, config_path, get_release, names
from .at_scale import SCALE_FLAGS, add_scale_args, at_scale
from .speedups import add_speedup_args, speedups
from .video_args import add_camera_args, add_motion_args, add_verbose_arg

logger = logging.getLogger("simple_video_sample")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
VERSIONS = names("video")  # the video releases of sgm.inference.releases


def _inputs(input_path: str) -> list[Path]:
    """The input images; each file's header is read (a size above
    ``sgm.image_files.MAX_PIXELS``, or no image at all, is refused naming the file)."""
    from ..image_files import check_image_file

    path = Path(input_path)
    if path.is_file():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise InputError(f"input {path} is not a {'/'.join(IMAGE_SUFFIXES)} image")
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InputError(f"folder {path} holds no {'/'.join(IMAGE_SUFFIXES)} images")
    else:
        raise InputError(f"input_path not found: {path}")
    for file in files:
        check_image_file(file, f"input image {file}")
    return files


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


@dataclass(frozen=True)
class Settings:
    """The checked flags of a run: the release's defaults filled in."""

    release: Any
    sv3d: bool
    num_frames: int
    num_steps: int
    cond_aug: float
    config: Path
    ckpt: Path
    folder: Path
    polars: list[float] | None
    azimuths: list[float] | None


def resolve(
    version: str,
    num_frames: int | None,
    num_steps: int | None,
    decoding_t: int,
    fps_id: int,
    motion_bucket_id: int,
    cond_aug: float,
    config: str | None,
    ckpt: str | None,
    output_folder: str | None,
    elevations_deg: float | Sequence[float] | None,
    azimuths_deg: Sequence[float] | None,
) -> Settings:
    """Check the flags and fill in the release's defaults (``InputError`` /
    ``CheckpointError`` before any model loads)."""
    _check_args(version, fps_id, motion_bucket_id)
    sizes = {"num_frames": num_frames, "num_steps": num_steps, "decoding_t": decoding_t}
    for name, value in sizes.items():
        if value is not None:
            checks.whole(name, value, 1)
    checks.finite("cond_aug", cond_aug, low=0.0)
    for name, angles in (("elevations_deg", elevations_deg), ("azimuths_deg", azimuths_deg)):
        many = angles if isinstance(angles, (list, tuple)) or angles is None else [angles]
        checks.finite_list(name, many or [])
    release = get_release(version)
    sv3d = release.is_sv3d
    if sv3d:
        if num_frames not in (None, release.num_frames):
            logger.warning("%s always samples %d frames", version, release.num_frames)
        num_frames, cond_aug = release.num_frames, release.cond_aug
    num_frames = int(num_frames or release.num_frames)
    num_steps = int(num_steps or release.num_steps)
    config = Path(config) if config else config_path(release)
    ckpt = Path(ckpt) if ckpt else checkpoint_path(release)
    if not ckpt.is_file():
        raise CheckpointError(
            f"checkpoint not found: expected {ckpt} "
            f"(download {ckpt.name} into checkpoints/ or pass --ckpt)"
        )
    default = Path("outputs/simple_video_sample", version)
    folder = _checked_folder(default if output_folder is None else output_folder)
    check_model_files(config, ckpt)  # whole, no pickled code, local encoders too (after the flags)
    polars = azimuths = None
    if version == "sv3d_p":
        from ..inference.video import sv3d_orbit

        polars, azimuths = sv3d_orbit(num_frames, elevations_deg, azimuths_deg)
    return Settings(
        release, sv3d, num_frames, num_steps, cond_aug, config, ckpt, folder, polars, azimuths
    )


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
    dtype: str = "auto",
    low_vram: bool = False,
    lora: Sequence[tuple[str | Path, float]] = (),
    compile: bool = False,
    deepcache: int | None = None,
    deepcache_branch: int = 0,
    tome: float | None = None,
    tome_max_downsample: int = 1,
) -> list[str]:
    """Sample a video for each input image; returns the written mp4 paths.

    Everything is checked before the model loads; nothing is written for a failed input.
    ``deepcache`` / ``tome`` (and their settings) turn on the speed-ups of
    ``sgm.commands.speedups``.
    """
    checks.seed(seed)
    faster = speedups(
        argparse.Namespace(
            deepcache=deepcache,
            deepcache_branch=deepcache_branch,
            tome=tome,
            tome_max_downsample=tome_max_downsample,
        )
    )
    inputs = _inputs(input_path)  # before the checkpoint: input problems come first
    s = resolve(
        version,
        num_frames,
        num_steps,
        decoding_t,
        fps_id,
        motion_bucket_id,
        cond_aug,
        config,
        ckpt,
        output_folder,
        elevations_deg,
        azimuths_deg,
    )
    sv3d, num_frames, num_steps, cond_aug = s.sv3d, s.num_frames, s.num_steps, s.cond_aug
    config, ckpt, folder, polars, azimuths = s.config, s.ckpt, s.folder, s.polars, s.azimuths
    import torch

    from ..devices import resolve_device
    from ..inference.video import (
        build_value_dict,
        load_video_model,
        prepare_sv3d_image,
        prepare_svd_image,
        sample_video,
        save_video,
    )
    from ..precision import parse_dtype

    device = resolve_device(device)
    parse_dtype(dtype, device)
    model = load_video_model(
        config,
        ckpt,
        device,
        num_frames,
        num_steps,
        verbose,
        dtype=dtype,
        offload=low_vram,
        lora=lora,
        compile_model=compile,
    )
    written = []
    for path in inputs:
        image = prepare_sv3d_image(path, image_frame_ratio) if sv3d else prepare_svd_image(path)
        generator = torch.Generator().manual_seed(int(seed))
        values = build_value_dict(
            image, cond_aug, fps_id, motion_bucket_id, generator, polars, azimuths
        )
        frames = sample_video(
            model,
            values,
            num_frames,
            generator=generator,
            decoding_t=decoding_t,
            replace_last_with_input=sv3d,
            **faster,
        )
        frames = _watermark(frames)
        folder.mkdir(parents=True, exist_ok=True)
        stem = _next_stem(folder)
        _save_input(image, folder / f"{stem}.jpg")
        written.append(str(save_video(frames, folder / f"{stem}.mp4", fps=fps_id + 1)))
        logger.info("wrote %s", written[-1])
    return written


def _checked_folder(folder: str | Path) -> Path:
    try:
        return cli.output_folder(str(folder))
    except argparse.ArgumentTypeError as error:
        raise InputError(f"output_folder: {error}") from None


def _watermark(frames: Any) -> Any:
    from ..inference.watermark import WATERMARK_BITS, WatermarkEmbedder

    try:
        return WatermarkEmbedder(WATERMARK_BITS)(frames)
    except ImportError as error:
        logger.warning("%s; frames are not watermarked", error)
        return frames


def _input_arg(text: str) -> Any:
    """An existing file or folder, or a glob pattern (its matches are read later)."""
    return text if glob.has_magic(text) else cli.existing_path(text)


def get_parser() -> argparse.ArgumentParser:
    """The command line (the flags of ``sample``; ``--flag=value`` or ``--flag value``)."""
    p = cli.ArgumentParser(prog="simple_video_sample.py", description=__doc__.splitlines()[0])
    p.add_argument(
        "--input_path",
        type=_input_arg,
        default=example_input("assets/test_image.png"),
        help="an image, a folder of images, or a glob ('inputs/**/*.png'; quote it); "
        "if not given, the example shipped with sgm",
    )
    p.add_argument(
        "--num_frames",
        type=cli.positive_int,
        default=None,
        help="frames per video (default: the version's)",
    )
    p.add_argument(
        "--num_steps",
        type=cli.positive_int,
        default=None,
        help="sampling steps (default: the version's)",
    )
    p.add_argument("--version", choices=list(VERSIONS), default="svd", help="the release")
    add_motion_args(p, cond_aug=0.02)
    p.add_argument("--seed", type=cli.seed, default=23, help="random seed")
    p.add_argument(
        "--decoding_t", type=cli.positive_int, default=14, help="frames decoded at a time"
    )
    p.add_argument(
        "--output_folder",
        type=cli.output_folder,
        default=None,
        help="default: outputs/simple_video_sample/<version>",
    )
    add_camera_args(p, elevations=10.0, image_frame_ratio=None, per="frame", which="sv3d: ")
    add_verbose_arg(p)
    p.add_argument(
        "--config",
        type=cli.existing_file,
        default=None,
        help="model config (default: the release's, sgm/configs/sampling/<version>.yaml)",
    )
    p.add_argument(
        "--ckpt",
        type=cli.existing_file,
        default=None,
        help="checkpoint (default: checkpoints/<version>.safetensors)",
    )
    cli.add_device_args(p)
    cli.add_compile_arg(p)
    cli.add_lora_arg(p)
    add_speedup_args(p)
    add_scale_args(p, "mp4")
    return p


def _at_scale(args: argparse.Namespace) -> None:
    from .video_at_scale import sample_at_scale

    settings = resolve(
        args.version,
        args.num_frames,
        args.num_steps,
        args.decoding_t,
        args.fps_id,
        args.motion_bucket_id,
        args.cond_aug,
        args.config,
        args.ckpt,
        args.output_folder,
        args.elevations_deg,
        args.azimuths_deg,
    )
    sample_at_scale(args, settings, _watermark, speedups(args))


def main(argv: list[str] | None = None) -> int:
    """Parse and check every flag, then sample; bad input: one line, exit code 2."""
    args = cli.parse(get_parser(), argv)
    cli.setup_logging(args.verbose)
    options = dict(vars(args))
    loras = options.pop("lora")
    if at_scale(args) or glob.has_magic(str(args.input_path)):
        return cli.run(lambda: _at_scale(args), prog="simple_video_sample.py")
    for name in SCALE_FLAGS:
        options.pop(name)
    return cli.run(
        lambda: print("\n".join(sample(**options, lora=loras))), prog="simple_video_sample.py"
    )


if __name__ == "__main__":
    sys.exit(main())
