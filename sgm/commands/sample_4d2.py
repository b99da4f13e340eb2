"""SV4D 2.0: novel-view videos of an object video (4 views, or 8 with the 8-view model).

    python scripts/sampling/simple_video_sample_4d2.py --input_path=camel.gif
    python scripts/sampling/simple_video_sample_4d2.py --input_path=camel.gif \\
        --model_path=checkpoints/sv4d2_8views.safetensors
    sgm-sample-4d2 --input_path=camel.gif       # the same, installed

The model file's name picks the release (sv4d2 or sv4d2_8views; any other name needs
--config). Writes to outputs/<model>/: {n:06d}_process_input.mp4 (the cropped input) and
{n:06d}_v001.mp4 .. _v004.mp4 (_v008 for 8 views), one video per view; existing files are
never overwritten.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .. import cli
from ..errors import ConfigError, InputError
from ..inference import sv4d_job
from ..inference.releases import checkpoint_path, config_path
from .sv4d_args import add_common_args

logger = logging.getLogger("simple_video_sample_4d2")


def _release(model_path: Path, config: Path | None) -> tuple[object, Path]:
    """The release spec and the config for a model file (picked by its name)."""
    from ..inference.sv4d import SPECS, spec_of_config

    name = model_path.stem
    spec = SPECS.get(name) if name != "sv4d" else None
    if config is None:
        if spec is None:
            raise InputError(
                f"model file name {model_path.name} selects no config: name it "
                "sv4d2.safetensors or sv4d2_8views.safetensors, or pass --config"
            )
        config = config_path(name)
    loaded = sv4d_job.load_config(config)
    if spec is None:
        spec = spec_of_config(loaded)
        if spec is None:
            raise ConfigError(
                f"{config}: N_TIME x N_VIEW = {loaded.get('N_TIME')} x "
                f"{loaded.get('N_VIEW')} matches no SV4D 2.0 release "
                "(12 x 4 or 5 x 8)"
            )
    sv4d_job.check_window(loaded, config, spec.n_time, spec.n_view)
    return spec, config


def sample(args: argparse.Namespace) -> list[Path]:
    """Check everything, then sample and write the videos; returns the written paths."""
    import torch

    from ..inference import sv4d, video_io

    sv4d_job.check_inputs(args)
    model_path = Path(args.model_path)
    spec, config = _release(model_path, Path(args.config) if args.config else None)
    if args.n_frames < spec.n_time:
        raise InputError(
            f"n_frames must be at least {spec.n_time} for {spec.name}, got {args.n_frames}"
        )
    azimuths_deg = args.azimuths_deg if args.azimuths_deg is not None else spec.azimuths_deg
    polars, azimuths = sv4d.orbit_rad(spec.n_view + 1, args.elevations_deg, azimuths_deg)
    ckpt = sv4d_job.check_checkpoint(model_path, "--model_path")
    frames = sv4d_job.read_input(args.input_path, args.n_frames)

    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    processed = sv4d_job.prepare_input(
        frames, args.img_size, args.image_frame_ratio, args.remove_bg
    )
    video = video_io.frames_to_tensor(processed)
    model = sv4d_job.load_engine(config, ckpt, args, spec.n_frames, half=False, lora=True)
    grid = sv4d.sample_sv4d2(
        model,
        spec,
        video,
        polars,
        azimuths,
        args.num_steps,
        generator,
        args.device,
        args.decoding_t,
        args.encoding_t,
        verbose=args.verbose,
    )
    sv4d_job.release(model)
    del model

    videos = {"_process_input.mp4": sv4d_job.uint8_video(processed)}
    for v in range(1, spec.n_view + 1):
        videos[f"_v{v:03d}.mp4"] = sv4d.view_video(grid, v)
    folder = Path(args.output_folder) / model_path.stem
    return sv4d_job.write_videos(folder, videos, per_run=spec.n_view + 1)


def get_parser() -> argparse.ArgumentParser:
    """The original's flags (``--flag=value`` or ``--flag value``) plus device options."""
    p = cli.ArgumentParser(prog="simple_video_sample_4d2.py", description=__doc__.splitlines()[0])
    add_common_args(
        p,
        {
            "input_path": "assets/sv4d_videos/camel.gif",
            "output_folder": "outputs",
            "num_steps": 50,
            "elevations_deg": 0.0,
            "image_frame_ratio": 0.9,
        },
    )
    p.add_argument(
        "--model_path",
        default=str(checkpoint_path("sv4d2")),
        help="sv4d2.safetensors or sv4d2_8views.safetensors (the name picks the config)",
    )
    p.add_argument(
        "--ckpt", dest="model_path", default=argparse.SUPPRESS, help="same as --model_path"
    )
    p.add_argument(
        "--n_frames", type=cli.positive_int, default=21, help="input and output video frames"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse and check every flag, then sample; bad input: one line, exit code 2."""
    args = cli.parse(get_parser(), argv)
    cli.setup_logging(args.verbose)
    return cli.run(
        lambda: print("\n".join(map(str, sample(args)))), prog="simple_video_sample_4d2.py"
    )


if __name__ == "__main__":
    sys.exit(main())
