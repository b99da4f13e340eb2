"""Reading image files with the size their header claims checked before any decoding.

A small file can claim an enormous size (a "decompression bomb": a PNG of a few hundred
bytes whose header says 60000 x 60000 pixels needs gigabytes once decoded). Every image
this library reads goes through :func:`read_image` (decode), :func:`opened_image` (the
lazily opened file, header checked) or :func:`check_image_file` (header only), which
refuse an image of more than :data:`MAX_PIXELS` pixels (8192 x 8192 = 67,108,864) with
an :class:`ImageTooLarge` (an ``InputError``) naming the file and the size it claims.
Frame sequences (GIFs, videos, folders of frames) are also held, for the frames read at
once, to :data:`MAX_SEQUENCE_PIXELS` (2**28 = 268,435,456 pixels, e.g. 21 frames of
3500 x 3500) with :func:`check_size`.

Pillow's own guard (``PIL.Image.MAX_IMAGE_PIXELS``, a warning above ~89 million pixels
and an error above ~179 million) is left as it is; the limits here are below it, so its
warning is never reached by the files read here.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import InputError

MAX_PIXELS = 8192 * 8192  # pixels of one image or frame
MAX_SEQUENCE_PIXELS = 1 << 28  # pixels of the frames of a sequence read at once


class ImageTooLarge(InputError):
    """An image (or a frame sequence) whose header claims more pixels than allowed;
    ``name`` is the file (or field) and ``reason`` the message without it."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name, self.reason = name, reason


def _limit_text(limit: int) -> str:
    side = int(limit**0.5)
    return f"{limit:,} pixels ({side}x{side})" if side * side == limit else f"{limit:,} pixels"


def check_size(
    width: int,
    height: int,
    name: str,
    frames: int = 1,
    max_pixels: int | None = None,
    max_sequence_pixels: int | None = None,
) -> None:
    """Raise :class:`ImageTooLarge` naming ``name`` when ``width x height`` is above
    ``max_pixels`` (default :data:`MAX_PIXELS`), or ``frames`` such frames are above
    ``max_sequence_pixels`` (default :data:`MAX_SEQUENCE_PIXELS`)."""
    limit = MAX_PIXELS if max_pixels is None else int(max_pixels)
    pixels = max(1, int(width)) * max(1, int(height))
    if pixels > limit:
        raise ImageTooLarge(
            name,
            f"the header claims {width}x{height} pixels ({pixels:,}), above the "
            f"limit of {_limit_text(limit)}; not decoded",
        )
    total_limit = MAX_SEQUENCE_PIXELS if max_sequence_pixels is None else int(max_sequence_pixels)
    if frames > 1 and pixels * frames > total_limit:
        raise ImageTooLarge(
            name,
            f"{frames} frames of {width}x{height} pixels ({pixels * frames:,} in "
            f"all) are above the limit of {total_limit:,} pixels for the frames read at "
            "once; not decoded",
        )


def _name(source: Any, name: str | None) -> str:
    if name is not None:
        return str(name)
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return str(getattr(source, "name", None) or "image")


def _header_size(source: Any) -> tuple[int, int] | None:
    """``(width, height)`` from a PNG or GIF header, else None (used for messages only)."""
    try:
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as file:
                head = file.read(32)
        elif isinstance(source, (bytes, bytearray)):
            head = bytes(source[:32])
        else:
            source.seek(0)
            head = source.read(32)
    except (OSError, AttributeError, ValueError):
        return None
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return struct.unpack(">II", head[16:24])
    if head[:4] == b"GIF8" and len(head) >= 10:
        return struct.unpack("<HH", head[6:10])
    return None


def too_large(error: Exception, name: str, source: Any = None) -> ImageTooLarge:
    """Pillow's ``DecompressionBombError`` (Pillow refused the size itself) as an
    :class:`ImageTooLarge` naming ``name``, with the size the header claims."""
    size = _header_size(source)
    if size is not None:
        try:
            check_size(*size, name)
        except ImageTooLarge as refused:
            return refused
    found = re.search(r"\((\d+) pixels\)", str(error))
    claimed = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
    return ImageTooLarge(
        name,
        f"the header claims {claimed}, above the limit of {_limit_text(MAX_PIXELS)}; not decoded",
    )


@contextlib.contextmanager
def opened_image(
    source: Any, name: str | None = None, max_pixels: int | None = None
) -> Iterator[Any]:
    """``PIL.Image.open(source)`` (a path, bytes or a binary file) with the size its
    header claims checked: nothing is decoded yet. Raises :class:`ImageTooLarge` naming
    ``name`` (default: the path or file name); other failures are Pillow's own errors."""
    from PIL import Image

    label = _name(source, name)
    stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(stream)
    except Image.DecompressionBombError as error:
        raise too_large(error, label, source) from None
    with image:
        check_size(*image.size, label, max_pixels=max_pixels)
        yield image


@contextlib.contextmanager
def _unreadable_as_input_error(label: str) -> Iterator[None]:
    from PIL import Image

    try:
        yield
    except InputError:
        raise
    except Image.DecompressionBombError as error:
        raise too_large(error, label) from None
    except Exception as error:  # noqa: BLE001 - whatever the decoder says, the file is unreadable
        reason = " ".join(str(error).split()) or type(error).__name__
        raise InputError(f"{label}: not a readable image ({reason[:200]})") from None


def read_image(source: Any, name: str | None = None, max_pixels: int | None = None) -> Any:
    """The decoded image (PIL, in its own mode) of ``source`` (a path, bytes or a binary
    file). Raises ``InputError`` naming ``name`` (default: the path or file name) when its
    header claims too many pixels (:class:`ImageTooLarge`) or it cannot be decoded."""
    label = _name(source, name)
    if isinstance(source, (str, os.PathLike)) and not Path(source).is_file():
        raise InputError(f"{label}: not found")
    with _unreadable_as_input_error(label):
        with opened_image(source, label, max_pixels) as image:
            image.load()
            return image.copy()


def check_image_file(
    source: Any, name: str | None = None, max_pixels: int | None = None
) -> tuple[int, int]:
    """``(width, height)`` of an image file from its header alone; ``InputError`` naming
    ``name`` when it claims too many pixels or is not an image."""
    label = _name(source, name)
    with _unreadable_as_input_error(label):
        with opened_image(source, label, max_pixels) as image:
            return image.size
