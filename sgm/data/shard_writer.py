"""Packing a folder of images + captions (or videos) into webdataset tar shards.

Each sample is ``<key>.<ext>`` (the file's bytes, unchanged), ``<key>.txt`` (the caption
from the same-name ``.txt`` beside it, if any) and ``<key>.json`` (its relative path and
size; for videos fps and frame count). Unreadable files, captions that are not UTF-8
text, and images whose header claims more than ``sgm.image_files.MAX_PIXELS`` pixels,
are reported and skipped. Shards
are ``<prefix>-000000.tar``, ... , each written to a temporary file and published whole;
existing shards are never replaced.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import read_text_file
from ..errors import InputError
from ..image_files import ImageTooLarge, check_size, opened_image
from ..output_files import write_new_file

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
VIDEO_EXTS = (".mp4", ".webm", ".mov", ".mkv", ".avi")


@dataclass
class PackReport:
    """What :func:`pack_folder` wrote and skipped."""

    shards: list[Path] = field(default_factory=list)
    samples: int = 0
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def find_media(source: Path, videos: bool) -> list[Path]:
    """Image (or video) files under ``source``, sorted."""
    exts = VIDEO_EXTS if videos else IMAGE_EXTS
    return sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in exts)


def _image_info(data: bytes, path: Path) -> dict[str, Any]:
    # the size the header claims is checked before decoding (sgm.image_files.MAX_PIXELS)
    with opened_image(io.BytesIO(data), str(path)) as image:
        image.load()
        return {"width": image.width, "height": image.height}


def _video_info(data: bytes, path: Path) -> dict[str, Any]:
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        context = stream.codec_context
        check_size(context.width, context.height, str(path))  # before the first frame
        first = next(container.decode(stream))
        return {
            "width": first.width,
            "height": first.height,
            "fps": float(stream.average_rate or 0),
            "frames": int(stream.frames or 0),
        }


def read_sample(path: Path, source: Path, videos: bool, caption_ext: str) -> dict[str, bytes]:
    """The tar members of one sample (without key); raises ``InputError`` if unreadable."""
    try:
        data = path.read_bytes()
        info = _video_info(data, path) if videos else _image_info(data, path)
    except ImageTooLarge:
        raise
    except Exception as error:  # noqa: BLE001 - whatever the decoder says, the file is skipped
        raise InputError(f"{path}: unreadable ({type(error).__name__}: {error})") from None
    info["path"] = str(path.relative_to(source))
    members = {
        path.suffix.lower().lstrip("."): data,
        "json": json.dumps(info, sort_keys=True).encode(),
    }
    caption = path.with_suffix("." + caption_ext)
    if caption.is_file():
        # a caption is text: a binary or non-UTF-8 file is named (and the sample skipped)
        members[caption_ext] = read_text_file(caption, InputError).encode("utf-8")
    elif not videos:
        raise InputError(f"{path}: no caption file {caption.name}")
    return members


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def write_shard(
    path: str | os.PathLike,
    samples: list[tuple[str, dict[str, bytes]]],
    before_publish: Any = None,
) -> Path:
    """Write ``(key, {ext: bytes})`` samples as one tar shard at ``path``: written to a
    temporary file, ``before_publish()`` called, then published whole; an existing
    ``path`` is never replaced (FileExistsError)."""

    def write(tmp: str) -> None:
        with tarfile.open(tmp, "w") as tar:
            for key, members in samples:
                for ext, data in members.items():
                    _add(tar, f"{key}.{ext}", data)
        if before_publish is not None:
            before_publish()

    return write_new_file(write, [Path(path)])


def _readable(
    files: list[Path],
    source: Path,
    videos: bool,
    caption_ext: str,
    report: PackReport,
    progress: Any,
) -> Iterator[dict[str, bytes]]:
    for path in files:
        try:
            yield read_sample(path, source, videos, caption_ext)
        except InputError as error:
            report.skipped.append((path, str(error)))
            progress.write(f"skipped {error}")
        finally:
            progress.update(1)


def pack_folder(
    source: str | os.PathLike,
    output: str | os.PathLike,
    videos: bool = False,
    max_count: int = 1000,
    max_bytes: int = 1 << 30,
    prefix: str = "shard",
    caption_ext: str = "txt",
    progress: bool = True,
) -> PackReport:
    """Pack ``source`` into shards of at most ``max_count`` samples / ``max_bytes`` bytes."""
    from tqdm import tqdm

    source, output = Path(source), Path(output)
    if not source.is_dir():
        raise InputError(f"{source} is not a folder")
    files = find_media(source, videos)
    if not files:
        kind = "videos" if videos else "images"
        raise InputError(
            f"no {kind} ({', '.join(VIDEO_EXTS if videos else IMAGE_EXTS)}) found under {source}"
        )
    if output.exists() and any(output.glob(f"{prefix}-*.tar")):
        raise InputError(
            f"{output} already holds {prefix}-*.tar shards; choose another folder or --prefix"
        )
    report = PackReport()
    with tqdm(total=len(files), unit="file", disable=not progress) as bar:
        samples = _readable(files, source, videos, caption_ext, report, bar)
        pending = next(samples, None)
        while pending is not None:
            state = {"first": pending}

            def write(tmp: str) -> None:
                count = size = 0
                with tarfile.open(tmp, "w") as tar:
                    sample = state["first"]
                    while sample is not None:
                        for ext, data in sample.items():
                            _add(tar, f"{report.samples:09d}.{ext}", data)
                            size += len(data)
                        report.samples += 1
                        count += 1
                        sample = next(samples, None)
                        if count >= max_count or size >= max_bytes:
                            break
                state["next"] = sample

            name = output / f"{prefix}-{len(report.shards):06d}.tar"
            report.shards.append(write_new_file(write, [name]))
            pending = state["next"]
    return report
