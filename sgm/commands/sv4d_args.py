"""The flags both SV4D command lines take (``sample_4d``, ``sample_4d2``)."""

from __future__ import annotations

import argparse
from typing import Any

from .. import cli
from ..assets import example_input
from .video_args import add_camera_args, add_verbose_arg


def add_common_args(parser: argparse.ArgumentParser, defaults: dict[str, Any]) -> None:
    """The flags both SV4D scripts take, with the script's ``defaults``."""
    p = parser
    p.add_argument(
        "--input_path",
        default=example_input(defaults["input_path"]),
        help="a gif or mp4, a folder of jpg/png frames, or a glob pattern; if not given, the "
        "example shipped with sgm",
    )
    p.add_argument(
        "--output_folder",
        type=cli.output_folder,
        default=defaults["output_folder"],
        help="where the videos go",
    )
    p.add_argument(
        "--num_steps", type=cli.positive_int, default=defaults["num_steps"], help="sampling steps"
    )
    p.add_argument(
        "--img_size",
        type=cli.multiple_of(64),
        default=576,
        help="image resolution (a multiple of 64)",
    )
    p.add_argument("--seed", type=cli.seed, default=23, help="random seed")
    p.add_argument(
        "--encoding_t",
        type=cli.positive_int,
        default=8,
        help="frames encoded at a time (lower it if memory runs out)",
    )
    p.add_argument(
        "--decoding_t",
        type=cli.positive_int,
        default=4,
        help="frames decoded at a time (lower it if memory runs out)",
    )
    add_camera_args(
        p, elevations=defaults["elevations_deg"], image_frame_ratio=defaults["image_frame_ratio"]
    )
    add_verbose_arg(p)
    p.add_argument(
        "--remove_bg",
        type=cli.boolean,
        nargs="?",
        const=True,
        default=False,
        help="cut the background out with rembg (extra: sgm[rembg])",
    )
    p.add_argument(
        "--config",
        type=cli.existing_file,
        default=None,
        help="model config (default: the release's, sgm/configs/sampling/<release>.yaml)",
    )
    cli.add_device_args(p)
    cli.add_compile_arg(p)
    cli.add_lora_arg(p)
