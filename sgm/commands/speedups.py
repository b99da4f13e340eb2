"""The sampling speed-up flags the image and video command lines share: ``--deepcache N``
(DeepCache), ``--tome RATIO`` (token merging), ``--tgate STEP`` (T-GATE; image models with
classifier-free guidance) and their settings; all off by default."""

from __future__ import annotations

import argparse
from typing import Any

from ..cli import fraction, non_negative_int, positive_int


def add_speedup_args(parser: argparse.ArgumentParser, tgate: bool = False) -> None:
    """The speed-up flags, in their own group (``tgate``: with ``--tgate``)."""
    group = parser.add_argument_group(
        "speed-ups (off by default; each changes the output a little)"
    )
    group.add_argument(
        "--deepcache",
        type=positive_int,
        metavar="N",
        help="DeepCache: run the whole network on one step in N, its shallow branch between",
    )
    group.add_argument(
        "--deepcache_branch",
        type=non_negative_int,
        default=0,
        metavar="B",
        help="DeepCache: skip branch whose deep features are reused (0: the shallowest)",
    )
    group.add_argument(
        "--tome",
        type=fraction,
        metavar="RATIO",
        help="token merging: share of the tokens merged in the transformer blocks, in [0, 1)",
    )
    group.add_argument(
        "--tome_max_downsample",
        type=int,
        choices=(1, 2, 4, 8),
        default=1,
        metavar="D",
        help="token merging: only in blocks downsampled at most D times (1, 2, 4 or 8; "
        "SDXL has attention from 2 on)",
    )
    if tgate:
        group.add_argument(
            "--tgate",
            type=positive_int,
            metavar="STEP",
            help="T-GATE: from this step on, reuse the cross-attention and run the network "
            "once per step without guidance (not with --deepcache)",
        )


def speedups(args: argparse.Namespace) -> dict[str, Any]:
    """``deepcache`` and ``tome`` settings of the parsed flags (None where off), as the
    sampling functions take them."""
    from ..modules.diffusionmodules.deepcache import DeepCache
    from ..modules.token_merging import TokenMerging

    return {
        "deepcache": None
        if args.deepcache is None
        else DeepCache(args.deepcache, args.deepcache_branch),
        "tome": None if not args.tome else TokenMerging(args.tome, args.tome_max_downsample),
    }


def params_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The same settings as ``SamplingParams`` fields."""
    return {
        "deepcache": args.deepcache or 0,
        "deepcache_branch": args.deepcache_branch,
        "tome": args.tome or 0.0,
        "tome_max_downsample": args.tome_max_downsample,
        "tgate": getattr(args, "tgate", None) or 0,
    }
