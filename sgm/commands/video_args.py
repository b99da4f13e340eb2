"""Flags the video command lines share: the motion conditioning of SVD / SV3D, the
camera of SV3D / SV4D, and the original's ``--verbose[=true]``."""

from __future__ import annotations

import argparse

from .. import cli


def add_motion_args(p: argparse.ArgumentParser, cond_aug: float, whose: str = "") -> None:
    """``--fps_id``, ``--motion_bucket_id``, ``--cond_aug`` (``whose``: the model they
    condition, when the command runs several)."""
    p.add_argument(
        "--fps_id", type=cli.non_negative_int, default=6, help=f"{whose}frame rate condition"
    )
    p.add_argument(
        "--motion_bucket_id",
        type=cli.non_negative_int,
        default=127,
        help=f"{whose}motion condition",
    )
    p.add_argument(
        "--cond_aug",
        type=cli.non_negative_float,
        default=cond_aug,
        help=f"{whose}noise added to the conditioning image",
    )


def add_camera_args(
    p: argparse.ArgumentParser,
    elevations: float,
    image_frame_ratio: float | None,
    per: str = "view",
    which: str = "",
) -> None:
    """``--elevations_deg``, ``--azimuths_deg``, ``--image_frame_ratio`` (``per``: what
    each angle of a list belongs to; ``which``: the releases that read them)."""
    p.add_argument(
        "--elevations_deg",
        type=cli.float_list,
        default=elevations,
        help=f"{which}one elevation, or one per {per}",
    )
    p.add_argument(
        "--azimuths_deg",
        type=cli.float_list,
        default=None,
        help=f"{which}one azimuth per {per} (default: the release's orbit)",
    )
    p.add_argument(
        "--image_frame_ratio",
        type=cli.unit_interval,
        default=image_frame_ratio,
        help=f"{which}fraction of the frame the object fills",
    )


def add_verbose_arg(p: argparse.ArgumentParser) -> None:
    """``--verbose`` or ``--verbose=true``, as the original scripts take it."""
    p.add_argument(
        "--verbose",
        type=cli.boolean,
        nargs="?",
        const=True,
        default=False,
        help="debug logging and sampler progress",
    )
