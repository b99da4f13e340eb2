"""Pack a folder of images + captions (or videos) into webdataset shards for fine-tuning.

    python scripts/data/pack_shards.py my_images/ shards/            # a.jpg + a.txt, ...
    sgm-pack-shards my_images/ shards/                               # installed
    python scripts/data/pack_shards.py my_videos/ shards/ --videos   # clip.mp4 (+ clip.txt)

Writes shards/shard-000000.tar, ... (existing shards are never replaced). Unreadable files,
and images without a caption file or whose caption is not UTF-8 text, are reported and
skipped.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import cli
from ..errors import InputError


def _folder(text: str):
    path = cli.existing_path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is not a folder")
    return path


def _prefix(text: str) -> str:
    if not text or not text.replace("-", "").replace("_", "").isalnum():
        raise argparse.ArgumentTypeError(f"{text!r}: use letters, digits, '-' and '_'")
    return text


def build_parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=_folder, help="folder of images (or videos)")
    parser.add_argument("output", type=cli.output_folder, help="folder for the shards")
    parser.add_argument(
        "--videos",
        action="store_true",
        help="pack videos (mp4, webm, mov, mkv, avi) instead of images",
    )
    parser.add_argument(
        "--max_samples_per_shard",
        type=cli.positive_int,
        default=1000,
        help="samples per shard at most",
    )
    parser.add_argument(
        "--max_shard_mb",
        type=cli.positive_float,
        default=1024.0,
        help="start a new shard once this size is reached",
    )
    parser.add_argument("--prefix", type=_prefix, default="shard", help="shard file name prefix")
    parser.add_argument(
        "--caption_ext",
        type=_prefix,
        default="txt",
        help="extension of the caption file beside each image",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def pack(args: argparse.Namespace) -> None:
    from ..data.shard_writer import pack_folder

    report = pack_folder(
        args.source,
        args.output,
        videos=args.videos,
        max_count=args.max_samples_per_shard,
        max_bytes=int(args.max_shard_mb * (1 << 20)),
        prefix=args.prefix,
        caption_ext=args.caption_ext,
        progress=not args.quiet,
    )
    if not report.samples:
        raise InputError(_nothing_packed(args, report.skipped))
    print(
        f"wrote {report.samples} samples into {len(report.shards)} shard(s) in "
        f"{args.output}; skipped {len(report.skipped)} file(s)"
    )


def _nothing_packed(args: argparse.Namespace, skipped: list) -> str:
    """Why nothing was packed: the causes of the skips, captions missing named first, then
    captions that are not text."""
    no_caption = [path for path, reason in skipped if "no caption file" in reason]
    if no_caption:
        names = ", ".join(f"{p.name} (no {p.stem}.{args.caption_ext})" for p in no_caption[:3])
        more = f" and {len(no_caption) - 3} more" if len(no_caption) > 3 else ""
        others = len(skipped) - len(no_caption)
        rest = f"; {others} other file(s) unreadable" if others else ""
        return (
            f"captions missing in {args.source}: {len(no_caption)} image(s) have no caption "
            f"file beside them: {names}{more}{rest}"
        )
    not_text = [reason for _, reason in skipped if "not UTF-8 text" in reason]
    if not_text:
        others = len(skipped) - len(not_text)
        rest = f"; {others} other file(s) unreadable" if others else ""
        return (
            f"captions not text in {args.source}: {len(not_text)} caption file(s) are not "
            f"UTF-8 text; first: {not_text[0]}{rest}"
        )
    first = f"; first: {skipped[0][1]}" if skipped else ""
    return f"no readable files in {args.source} ({len(skipped)} skipped{first})"


def main(argv: Sequence[str] | None = None) -> int:
    args = cli.parse(build_parser(), argv)
    return cli.run(lambda: pack(args), prog="pack_shards.py")


if __name__ == "__main__":
    sys.exit(main())
