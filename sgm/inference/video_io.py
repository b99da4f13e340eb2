"""Input videos for SV4D: reading (gif, mp4, a folder of frames, a glob), ping-pong padding,
object-centred square cropping on white, and optional background removal (``rembg``).

Everything here works on the host with PIL / numpy; nothing downloads. ``rembg`` is an
optional extra (``pip install sgm[rembg]``) and is used only with a model file that is
already on disk (:func:`check_background_removal`).
"""

from __future__ import annotations

import glob
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..image_files import check_size, opened_image, too_large

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".gif", ".mp4")
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
WHITE_THRESHOLD = 250  # a pixel whose channel mean is above this counts as background
REMBG_MODEL = "u2net"


# --------------------------------------------------------------------------- reading


def _is_pattern(text: str) -> bool:
    return any(char in text for char in "*?[")


def check_video_path(input_path: str | os.PathLike) -> None:
    """Raise ``InputError`` unless ``input_path`` names a gif/mp4 file, a folder holding
    jpg/jpeg/png frames, or a glob pattern that matches files; a gif or frame whose header
    claims more than ``sgm.image_files.MAX_PIXELS`` pixels is refused, naming it, and
    one that is no image at all too (headers only: nothing is decoded here)."""
    kind, files = _sources(str(input_path))
    if kind == "frames" or files[0].suffix.lower() == ".gif":
        for file in files:
            _header_size(file, input_path)


def _reason(error: BaseException) -> str:
    return (" ".join(str(error).split()) or type(error).__name__)[:200]


def _header_size(file: Path, input_path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` from the header of an image file; ``InputError`` when it claims
    too many pixels (naming the file) or is no image (naming the input)."""
    try:
        with opened_image(file) as image:
            return image.size
    except InputError:
        raise
    except Exception as error:  # noqa: BLE001 - whatever Pillow says, the input is unreadable
        raise InputError(f"cannot decode input {input_path}: {_reason(error)}") from None


def _sources(text: str) -> tuple[str, list[Path]]:
    """``("video", [file])`` or ``("frames", files)`` for an input path."""
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            raise InputError(
                f"input {path} is not a {'/'.join(VIDEO_SUFFIXES)} video "
                f"(or a folder of {'/'.join(FRAME_SUFFIXES)} frames, or a glob pattern)"
            )
        return "video", [path]
    if path.is_dir():
        files = sorted(
            p for p in path.iterdir() if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES
        )
        if not files:
            raise InputError(f"input folder {path} holds no {'/'.join(FRAME_SUFFIXES)} frames")
        return "frames", files
    if _is_pattern(text):
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(text)) if Path(p).is_file())
        if not files:
            raise InputError(f"input pattern {text!r} matches no files")
        return "frames", files
    raise InputError(f"input not found: {path}")


def _normalise_mode(image: Any) -> Any:
    """RGB, or RGBA where the frame carries transparency."""
    if image.mode in ("RGB", "RGBA"):
        return image
    has_alpha = "A" in image.mode or "transparency" in image.info
    return image.convert("RGBA" if has_alpha else "RGB")


def _read_gif(path: Path, n_frames: int) -> list[Any]:
    from PIL import ImageSequence

    with opened_image(path) as video:
        width, height = video.size
        check_size(width, height, str(path), frames=min(n_frames, getattr(video, "n_frames", 1)))
        frames = []
        for frame in ImageSequence.Iterator(video):
            check_size(*frame.size, str(path))  # a later frame may widen the screen
            frames.append(frame.convert("RGBA"))
            if len(frames) == n_frames:
                break
    return frames


def _read_mp4(path: Path, n_frames: int) -> list[Any]:
    import imageio_ffmpeg
    from PIL import Image

    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    try:
        meta = next(reader)
        width, height = meta["size"]
        count = n_frames
        duration, fps = meta.get("duration"), meta.get("fps")
        if duration and fps and math.isfinite(duration * fps):
            count = max(1, min(n_frames, math.ceil(duration * fps)))
        check_size(width, height, str(path), frames=count)  # before any frame is decoded
        frames = []
        for data in reader:
            array = np.frombuffer(data, np.uint8).reshape(height, width, 3)
            frames.append(Image.fromarray(array.copy()))
            if len(frames) == n_frames:
                break
    finally:
        reader.close()
    return frames


def read_frames(input_path: str | os.PathLike, n_frames: int) -> list[Any]:
    """The first ``n_frames`` frames (PIL images, RGB or RGBA) of a gif, an mp4, a folder
    of jpg/jpeg/png frames (sorted by name) or a glob pattern.

    Raises ``InputError`` naming the input when it does not exist, cannot be decoded,
    holds no frames, or holds frames of different sizes; and naming the file when a
    frame claims more than ``sgm.image_files.MAX_PIXELS`` pixels, or the frames read
    more than ``MAX_SEQUENCE_PIXELS`` together (sizes are checked before decoding).
    """
    from PIL import Image

    kind, files = _sources(str(input_path))
    try:
        if kind == "video" and files[0].suffix.lower() == ".gif":
            frames = _read_gif(files[0], n_frames)
        elif kind == "video":
            frames = _read_mp4(files[0], n_frames)
        else:
            files = files[:n_frames]
            sizes = [_header_size(file, input_path) for file in files]
            if len(set(sizes)) > 1:
                raise InputError(
                    f"input {input_path}: frames differ in size ({sorted(set(sizes))})"
                )
            check_size(*sizes[0], str(input_path), frames=len(files))
            frames = []
            for file in files:
                with opened_image(file) as image:
                    image.load()
                    frames.append(_normalise_mode(image.copy()))
    except InputError:
        raise
    except Image.DecompressionBombError as error:
        raise too_large(error, str(files[0] if kind == "video" else input_path)) from None
    except (OSError, RuntimeError, ValueError, StopIteration, SyntaxError) as error:
        raise InputError(f"cannot decode input {input_path}: {_reason(error)}") from None
    if not frames:
        raise InputError(f"input {input_path} holds no frames")
    sizes = {frame.size for frame in frames}
    if len(sizes) > 1:
        raise InputError(f"input {input_path}: frames differ in size ({sorted(sizes)})")
    return frames


def ping_pong(frames: Sequence[Any], n_frames: int) -> list[Any]:
    """``n_frames`` frames: the input, then played backwards, forwards, ... as needed.

    Inputs of at least ``n_frames / 2`` frames give the original's single reflection
    ``(frames + frames[::-1])[:n_frames]``.
    """
    frames = list(frames)
    if not frames:
        raise InputError("no frames to pad")
    out: list[Any] = []
    forward = True
    while len(out) < n_frames:
        out.extend(frames if forward else frames[::-1])
        forward = not forward
    return out[:n_frames]


# --------------------------------------------------------------------------- preprocessing


def _foreground_mask(frame: Any) -> np.ndarray:
    array = np.asarray(frame)
    if frame.mode == "RGBA":
        return array[..., 3] > 0
    return array[..., :3].mean(-1) <= WHITE_THRESHOLD


def object_half_side(frames: Sequence[Any]) -> int:
    """Half side of the square, centred on the frame centre, that holds the object
    (alpha > 0, or not white) in every frame; all background keeps the whole frame."""
    width, height = frames[0].size
    centre_row, centre_col = height // 2, width // 2
    top, left, bottom, right = height, width, 0, 0
    for frame in frames:
        rows, cols = np.nonzero(_foreground_mask(frame))
        if len(rows) == 0:
            continue
        top, bottom = min(top, int(rows.min())), max(bottom, int(rows.max()) + 1)
        left, right = min(left, int(cols.min())), max(right, int(cols.max()) + 1)
    if bottom == 0:  # no object anywhere: the original's empty box at the corner
        top = left = 0
    return max(centre_col - left, centre_row - top, right - centre_col, bottom - centre_row)


def preprocess_frames(
    frames: Sequence[Any], size: int = 576, image_frame_ratio: float | None = 0.917
) -> np.ndarray:
    """SV4D input frames: ``(T, size, size, 3)`` uint8 on white.

    One square, centred on the frame centre and just holding the object in every frame
    (alpha > 0 for RGBA frames, channel mean <= 250 otherwise), is cut from each frame,
    padded to ``side / image_frame_ratio`` (transparent), resized (LANCZOS) and
    composited on white, values truncated to 8 bits as in the original. For square
    frames this is the original's crop; other shapes use each axis' own centre.
    """
    from PIL import Image

    half = object_half_side(frames)
    box = 2 * half
    width, height = frames[0].size
    rows = slice(max(0, height // 2 - half), max(0, height // 2 - half) + min(height, box))
    cols = slice(max(0, width // 2 - half), max(0, width // 2 - half) + min(width, box))
    side = int(box / image_frame_ratio) if image_frame_ratio else height
    out = []
    for frame in frames:
        array = np.asarray(frame.convert("RGBA"))[rows, cols]
        side_here = max(side, *array.shape[:2])
        padded = np.zeros((side_here, side_here, 4), dtype=np.uint8)
        centre = side_here // 2
        r0, c0 = centre - array.shape[0] // 2, centre - array.shape[1] // 2
        padded[r0 : r0 + array.shape[0], c0 : c0 + array.shape[1]] = array
        rgba = np.asarray(Image.fromarray(padded).resize((size, size), Image.LANCZOS)) / 255.0
        rgb = rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])
        out.append((rgb * 255).astype(np.uint8))
    return np.stack(out)


def frames_to_tensor(frames: np.ndarray) -> Any:
    """``(T, H, W, 3)`` uint8 -> float32 ``(T, 3, H, W)`` in [-1, 1]."""
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    return tensor / 255.0 * 2 - 1


# --------------------------------------------------------------------------- rembg


def rembg_model_path(model: str = REMBG_MODEL) -> Path:
    """Where ``rembg`` keeps ``model``: ``$U2NET_HOME`` or ``$XDG_DATA_HOME/.u2net``
    (default ``~/.u2net``)."""
    home = os.environ.get("U2NET_HOME") or os.path.join(
        os.environ.get("XDG_DATA_HOME", "~"), ".u2net"
    )
    return Path(home).expanduser() / f"{model}.onnx"


def check_background_removal(model: str = REMBG_MODEL) -> Path:
    """Raise ``InputError`` unless ``rembg`` is installed and its model file is on disk
    (it is never downloaded here)."""
    import importlib.util

    if importlib.util.find_spec("rembg") is None:
        raise InputError(
            "remove_bg needs the rembg package: pip install 'sgm[rembg]' "
            "(or pass frames with a white or transparent background)"
        )
    path = rembg_model_path(model)
    if not path.is_file():
        raise InputError(
            f"remove_bg needs rembg's model file {path}; put {model}.onnx there "
            "(or set U2NET_HOME); nothing is downloaded"
        )
    return path


def remove_background(frames: Sequence[Any], model: str = REMBG_MODEL) -> list[Any]:
    """Cut the background out of every frame without alpha (``rembg`` with alpha
    matting, as the original); RGBA frames are kept."""
    check_background_removal(model)
    import rembg

    previous = os.environ.get("MODEL_CHECKSUM_DISABLED")
    os.environ["MODEL_CHECKSUM_DISABLED"] = "1"  # the file is there: never re-fetch it
    try:
        session = rembg.new_session(model)
    finally:
        if previous is None:
            os.environ.pop("MODEL_CHECKSUM_DISABLED", None)
        else:
            os.environ["MODEL_CHECKSUM_DISABLED"] = previous
    out = []
    for frame in frames:
        if frame.mode != "RGBA":
            frame = rembg.remove(frame.convert("RGBA"), session=session, alpha_matting=True)
        out.append(frame)
    return out
