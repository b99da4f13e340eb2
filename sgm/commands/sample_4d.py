"""SV4D: eight novel-view videos of an object video (21 frames).

    python scripts/sampling/simple_video_sample_4d.py --input_path=video.mp4
    sgm-sample-4d --input_path=video.mp4        # the same, installed

Needs checkpoints/sv4d.safetensors and checkpoints/sv3d_u.safetensors (or sv3d_p with
--sv3d_version=sv3d_p). Writes to outputs/sv4d/: {n:06d}_process_input.mp4 (the cropped
input), {n:06d}_t000.mp4 (SV3D's views of frame 0), {n:06d}_v001.mp4 .. _v008.mp4 (one
video per view) and {n:06d}_diag.mp4 (the view turning as time runs); existing files are
never overwritten.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .. import cli
from ..inference import sv4d_job
from ..inference.releases import checkpoint_path, config_path, get_release, releases
from .sv4d_args import add_common_args
from .video_args import add_motion_args

logger = logging.getLogger("simple_video_sample_4d")

SV3D_VERSIONS = tuple(r.name for r in releases("video") if r.is_sv3d)
N_TIME, N_VIEW = get_release("sv4d").n_time, get_release("sv4d").n_view


def sample(args: argparse.Namespace) -> list[Path]:
    """Check everything, then sample and write the videos; returns the written paths."""
    import torch

    from ..inference import sv4d, video_io

    sv4d_job.check_inputs(args)
    polars, azimuths = sv4d.orbit_rad(sv4d.SV3D_VIEWS, args.elevations_deg, args.azimuths_deg)
    config = Path(args.config) if args.config else config_path("sv4d")
    sv4d_job.check_window(sv4d_job.load_config(config), config, N_TIME, N_VIEW)
    sv3d_config = Path(args.sv3d_config) if args.sv3d_config else config_path(args.sv3d_version)
    sv4d_job.load_config(sv3d_config)
    ckpt = sv4d_job.check_checkpoint(args.ckpt or checkpoint_path("sv4d"))
    sv3d_ckpt = sv4d_job.check_checkpoint(
        args.sv3d_ckpt or checkpoint_path(args.sv3d_version), "--sv3d_ckpt"
    )
    frames = sv4d_job.read_input(args.input_path, sv4d.SV4D_FRAMES)

    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    processed = sv4d_job.prepare_input(
        frames, args.img_size, args.image_frame_ratio, args.remove_bg
    )
    video = video_io.frames_to_tensor(processed)

    sv3d = sv4d_job.load_engine(sv3d_config, sv3d_ckpt, args, sv4d.SV3D_VIEWS, half=False)
    camera = args.sv3d_version == "sv3d_p"
    reference = sv4d.sv3d_reference(
        sv3d,
        video[0],
        polars if camera else None,
        azimuths if camera else None,
        generator,
        args.decoding_t,
        args.fps_id,
        args.motion_bucket_id,
        args.cond_aug,
    )
    sv4d_job.release(sv3d)
    del sv3d

    model = sv4d_job.load_engine(config, ckpt, args, N_TIME * N_VIEW, half=True, lora=True)
    grid = sv4d.sample_sv4d(
        model,
        video,
        reference,
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

    videos = {
        "_process_input.mp4": sv4d_job.uint8_video(processed),
        "_t000.mp4": sv4d.first_frame_video(video, reference),
    }
    for v in range(1, N_VIEW + 1):
        videos[f"_v{v:03d}.mp4"] = sv4d.view_video(grid, v)
    videos["_diag.mp4"] = sv4d.diagonal_video(grid)
    return sv4d_job.write_videos(Path(args.output_folder), videos, per_run=len(videos))


def get_parser() -> argparse.ArgumentParser:
    """The original's flags (``--flag=value`` or ``--flag value``) plus device options."""
    p = cli.ArgumentParser(prog="simple_video_sample_4d.py", description=__doc__.splitlines()[0])
    add_common_args(
        p,
        {
            "input_path": "assets/sv4d_videos/test_video1.mp4",
            "output_folder": "outputs/sv4d",
            "num_steps": get_release("sv4d").num_steps,
            "elevations_deg": 10.0,
            "image_frame_ratio": 0.917,
        },
    )
    p.add_argument(
        "--sv3d_version",
        choices=SV3D_VERSIONS,
        default="sv3d_u",
        help="the SV3D model that makes the first frame's views",
    )
    add_motion_args(p, cond_aug=1e-5, whose="SV3D's ")
    p.add_argument(
        "--ckpt", default=None, help="SV4D checkpoint (default: checkpoints/sv4d.safetensors)"
    )
    p.add_argument(
        "--sv3d_config",
        type=cli.existing_file,
        default=None,
        help="SV3D config (default: the release's for --sv3d_version)",
    )
    p.add_argument(
        "--sv3d_ckpt",
        default=None,
        help="SV3D checkpoint (default: checkpoints/<sv3d_version>.safetensors)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse and check every flag, then sample; bad input: one line, exit code 2."""
    args = cli.parse(get_parser(), argv)
    cli.setup_logging(args.verbose)
    return cli.run(
        lambda: print("\n".join(map(str, sample(args)))), prog="simple_video_sample_4d.py"
    )


if __name__ == "__main__":
    sys.exit(main())
