"""A run's outputs as files in a folder, one an item, named by the item's index, and the
encoders that turn a sampled image or video into the bytes of such a file (PNG with its
parameters as text chunks, H.264 mp4). Tar shards for webdataset are in
``sgm.data.sample_shards``."""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..output_files import write_new_file
from .manifest import Record, sha256_bytes, sha256_file
from .work_items import WorkItem


class FolderOutput:
    """``<folder>/<index:09d><suffix>`` an item, written whole (never half a file)."""

    def __init__(self, folder: str | os.PathLike, suffix: str) -> None:
        self.folder = Path(folder)
        self.suffix = suffix

    def path(self, item: WorkItem) -> Path:
        return self.folder / f"{item.stem()}{self.suffix}"

    def is_done(self, record: Record) -> bool:
        path = self.folder / str(record.get("file", ""))
        return path.is_file() and sha256_file(path) == record.get("sha256")

    def check_free(self, items: Sequence[WorkItem], records: Mapping[int, Record]) -> None:
        for item in items:
            path = self.path(item)
            if item.index not in records and path.exists():
                raise InputError(
                    f"{path} exists but the manifest does not record it; move it away, use "
                    "another output folder, or pass --overwrite"
                )

    def put(
        self,
        item: WorkItem,
        data: bytes,
        record: Record,
        publish: Callable[[list[Record]], None],
        replace: bool,
    ) -> None:
        path = self.path(item)
        record = {**record, "file": path.name, "sha256": sha256_bytes(data)}

        def write(tmp: str) -> None:
            Path(tmp).write_bytes(data)
            publish([record])

        write_new_file(write, [path], overwrite=replace)

    def close(self) -> None:
        """Nothing is buffered."""

    def forget(self, records: Mapping[int, Record]) -> None:
        """Old files are replaced one by one as their items are made again."""


def png_bytes(
    image: torch.Tensor, metadata: Mapping[str, Any] | None = None, watermark: bool = True
) -> bytes:
    """A ``(3, H, W)`` image in [0, 1] as PNG bytes (with the invisible watermark unless
    ``watermark=False``); ``metadata`` as text chunks, values as strings."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    if image.dim() != 3 or image.shape[0] != 3:
        raise InputError(f"expected a (3, H, W) image, got {tuple(image.shape)}")
    if watermark:
        from .helpers import embed_watermark

        image = embed_watermark(image[None])[0]
    array = 255.0 * image.detach().float().cpu().permute(1, 2, 0).numpy()
    pixels = Image.fromarray(np.clip(np.round(array), 0, 255).astype(np.uint8))
    info = PngInfo()
    for key, value in (metadata or {}).items():
        info.add_text(str(key), str(value))
    buffer = io.BytesIO()
    pixels.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def mp4_bytes(frames: torch.Tensor, fps: float) -> bytes:
    """``(T, 3, H, W)`` frames in [0, 1] as H.264 mp4 bytes (``video.save_video``)."""
    from .video import save_video

    with tempfile.TemporaryDirectory(prefix="sgm-mp4-") as folder:
        path = save_video(frames, Path(folder, "video.mp4"), fps)
        return path.read_bytes()
