"""MNIST from local idx files, or the embedded animal silhouettes when MNIST is absent."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from ..errors import InputError
from ._loader import DictLoader, resolve_root
from .embedded import ImageLabelDataset
from .toy import EmbeddedLoader

logger = logging.getLogger(__name__)

ENV_VAR = "SGM_MNIST_DIR"
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (optionally gzipped) into an array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as stream:
        raw = stream.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise InputError(f"{path}: not an unsigned-byte idx file")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise InputError(f"{path}: expected {shape} bytes of data, found {data.size}")
    return data.reshape(shape)


def _find(folder: Path, stem: str) -> Path | None:
    for sub in ("", "MNIST/raw", "raw"):
        for name in (stem, stem + ".gz"):
            candidate = folder / sub / name
            if candidate.is_file():
                return candidate
    return None


def find_mnist(root: str | Path) -> dict[str, tuple[Path, Path]] | None:
    """Paths of the four MNIST idx files under ``root``, or None if any is missing."""
    found = {}
    for split, stems in FILES.items():
        paths = tuple(_find(Path(root), stem) for stem in stems)
        if None in paths:
            return None
        found[split] = paths
    return found


class MNISTDataDictWrapper(Dataset):
    """Wrap a dataset of ``(image, label)`` pairs as ``{"jpg": image, "cls": label}``."""

    def __init__(self, dset: Dataset):
        super().__init__()
        self.dset = dset

    def __getitem__(self, i: int) -> dict:
        x, y = self.dset[i]
        return {"jpg": x, "cls": y}

    def __len__(self) -> int:
        return len(self.dset)


class MNISTLoader(DictLoader):
    """MNIST (1x28x28 in [-1, 1], ``cls`` 0-9); validation is the test split.

    Reads the standard idx files from ``root``, ``$SGM_MNIST_DIR`` or ``.data``
    (``MNIST/raw`` inside is searched too). When they are absent, it logs a warning
    and serves the embedded animal silhouettes (also 1x28x28, 10 classes) instead.
    """

    def __init__(
        self,
        batch_size: int,
        num_workers: int = 0,
        prefetch_factor: int = 2,
        shuffle: bool = True,
        root: str | None = None,
    ):
        super().__init__(batch_size, num_workers, prefetch_factor, shuffle)
        self.root = resolve_root(root, ENV_VAR, ".data")

    def _make_datasets(self) -> tuple[Dataset, Dataset]:
        files = find_mnist(self.root)
        if files is None:
            logger.warning(
                "MNIST idx files not found in %r (set data.params.root or $%s); using the "
                "embedded animal-mnist silhouettes (28x28, 10 classes) instead.",
                self.root,
                ENV_VAR,
            )
            fallback = EmbeddedLoader(self.batch_size, dataset="animal")
            return fallback._make_datasets()
        made = [ImageLabelDataset(read_idx(i), read_idx(lbl)) for i, lbl in files.values()]
        logger.info("MNIST from %s: %d train, %d test", self.root, *map(len, made))
        return made[0], made[1]
