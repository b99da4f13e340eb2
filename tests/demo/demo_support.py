"""Paths shared by the demo page tests."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def capture_media(monkeypatch) -> list[tuple[bytes, str]]:
    """Record every (bytes, mimetype) a page hands to Streamlit's media storage (images,
    videos), so a test can read what the page shows."""
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    seen: list[tuple[bytes, str]] = []
    original = MemoryMediaFileStorage.load_and_get_id

    def record(self, path_or_data, mimetype, kind, filename=None):
        data = path_or_data
        if isinstance(data, str):
            with open(data, "rb") as handle:
                data = handle.read()
        seen.append((data, mimetype))
        return original(self, path_or_data, mimetype, kind, filename)

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", record)
    return seen


def shown_images(media: list[tuple[bytes, str]]) -> list:
    """The images among recorded media, as uint8 RGB arrays."""
    import io

    import numpy as np
    from PIL import Image

    images = []
    for data, mimetype in media:
        if mimetype.startswith("image/"):
            with Image.open(io.BytesIO(data)) as image:
                images.append(np.asarray(image.convert("RGB")))
    return images
