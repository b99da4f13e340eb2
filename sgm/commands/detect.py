"""Check images for sgm's invisible watermark.

    python scripts/demo/detect.py outputs/ "samples/*.png" photo.jpg
    sgm-detect outputs/                                      # the same, installed

Takes files, folders and glob patterns. A folder is searched with its subfolders (the
image command line writes into ``<folder>/<version>/``), at most 8 levels deep and 10000
images; a larger one is refused (name a subfolder or a glob). For each image it prints
how many of the 48 watermark bits match and a verdict: up to 27 matching bits "not
watermarked", up to 33 "partial match", up to 35 "likely watermarked", more
"watermarked". Files that cannot be read (or are below 256x256 pixels, or whose header
claims more than ``sgm.image_files.MAX_PIXELS`` pixels) are reported and skipped. Ends
with a summary line. Exit status: 0 when every file was checked, 1 when some
could not be read (the others are still checked), 2 (before anything is read) when an
argument names no file at all.
"""

from __future__ import annotations

import glob
import os
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..cli import ArgumentParser, run
from ..errors import InputError
from ..inference.watermark import VERDICTS, WATERMARK_BITS, detect_watermark

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
UNREADABLE = "unreadable"
MAX_DEPTH = 8  # subfolder levels searched below a folder argument
MAX_IMAGES = 10_000  # images one folder argument may hold


def folder_images(folder: Path) -> list[Path] | None:
    """The images in ``folder`` and its subfolders (hidden ones and symlinked folders
    skipped, at most ``MAX_DEPTH`` levels down), sorted; None when there are more than
    ``MAX_IMAGES``."""
    images: list[Path] = []
    for root, dirs, files in os.walk(folder):
        depth = len(Path(root).relative_to(folder).parts)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if depth < MAX_DEPTH else []
        for name in files:
            path = Path(root) / name
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                images.append(path)
                if len(images) > MAX_IMAGES:
                    return None
    return sorted(images)


def expand(patterns: Sequence[str]) -> Iterator[tuple[str, str | None]]:
    """``(path, problem)`` for every file named by ``patterns``; ``problem`` is None for
    files to check, else why the argument gave nothing to check."""
    for pattern in patterns:
        path = Path(pattern).expanduser()
        if path.is_dir():
            images = folder_images(path)
            if images is None:
                yield (
                    str(path),
                    (f"folder holds more than {MAX_IMAGES} images; name a subfolder or a glob"),
                )
                continue
            if not images:
                yield str(path), f"folder holds no images (searched {MAX_DEPTH} levels deep)"
            for image in images:
                yield str(image), None
        elif path.exists():
            yield str(path), None
        elif glob.has_magic(pattern):
            matches = sorted(m for m in glob.glob(str(path), recursive=True) if Path(m).is_file())
            if not matches:
                yield pattern, "no file matches"
            for match in matches:
                yield match, None
        else:
            yield str(path), "no such file"


def check_file(path: str) -> tuple[int, str]:
    """``(matching bits, verdict)`` of one image file; raises OSError/ValueError when it
    cannot be read or is too small."""
    import numpy as np

    from ..image_files import opened_image

    with opened_image(path) as image:  # a header claiming too many pixels: not decoded
        rgb = np.asarray(image.convert("RGB"))
    return detect_watermark(rgb)


def check_arguments(patterns: Sequence[str]) -> None:
    """Raise InputError for the first argument that names nothing to check."""
    for path, problem in expand(patterns):
        if problem is not None:
            raise InputError(f"{path}: {problem}")


def detect(patterns: Sequence[str]) -> Counter:
    """Print one line per file and a summary; returns the count of each verdict."""
    counts: Counter = Counter()
    for path, problem in expand(patterns):
        if problem is None:
            try:
                matches, verdict = check_file(path)
            except (OSError, ValueError) as error:
                reason = getattr(error, "reason", error)  # ImageTooLarge: without the path
                problem = " ".join(str(reason).split()) or type(error).__name__
        if problem is not None:
            counts[UNREADABLE] += 1
            print(f"{path}: {UNREADABLE} ({problem})", flush=True)
            continue
        counts[verdict] += 1
        print(f"{path}: {matches}/{len(WATERMARK_BITS)} bits match: {verdict}", flush=True)
    labels = [label for _, label in reversed(VERDICTS)] + [UNREADABLE]
    total = sum(counts.values())
    print(f"{total} file(s): " + ", ".join(f"{counts[label]} {label}" for label in labels))
    return counts


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="image files, folders of images or glob patterns"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    unreadable = 0

    def job() -> None:
        nonlocal unreadable
        check_arguments(args.paths)
        unreadable = detect(args.paths)[UNREADABLE]

    return run(job, prog="detect.py") or (1 if unreadable else 0)


if __name__ == "__main__":
    sys.exit(main())
