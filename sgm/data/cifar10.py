"""CIFAR-10 from the local python batches, or embedded data when CIFAR-10 is absent."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from ._loader import DictLoader, resolve_root
from ._safe_pickle import load_numpy_pickle
from .embedded import ImageLabelDataset
from .mnist import MNISTDataDictWrapper
from .toy import EmbeddedLoader

logger = logging.getLogger(__name__)

ENV_VAR = "SGM_CIFAR10_DIR"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)

CIFAR10DataDictWrapper = MNISTDataDictWrapper


def find_cifar10(root: str | Path) -> Path | None:
    """The folder holding the CIFAR-10 python batches under ``root``, if any."""
    for folder in (Path(root), Path(root) / "cifar-10-batches-py"):
        if all((folder / name).is_file() for name in TRAIN_BATCHES + TEST_BATCHES):
            return folder
    return None


def read_batches(folder: Path, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 32, 32, 3)`` uint8 and labels from CIFAR-10 python batch files."""
    images, labels = [], []
    for name in names:
        with open(folder / name, "rb") as stream:
            batch = load_numpy_pickle(stream, source=str(folder / name), encoding="bytes")
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
    return np.concatenate(images).transpose(0, 2, 3, 1), np.concatenate(labels)


class CIFAR10Loader(DictLoader):
    """CIFAR-10 (3x32x32 in [-1, 1], ``cls`` 0-9); validation is the test split.

    Reads ``cifar-10-batches-py`` from ``root``, ``$SGM_CIFAR10_DIR`` or ``.data``.
    When absent, it logs a warning and serves the embedded animal silhouettes,
    resized to 32x32 and repeated to three channels.
    """

    def __init__(
        self,
        batch_size: int,
        num_workers: int = 0,
        shuffle: bool = True,
        prefetch_factor: int = 2,
        root: str | None = None,
    ):
        super().__init__(batch_size, num_workers, prefetch_factor, shuffle)
        self.root = resolve_root(root, ENV_VAR, ".data")

    def _make_datasets(self) -> tuple[Dataset, Dataset]:
        folder = find_cifar10(self.root)
        if folder is None:
            logger.warning(
                "CIFAR-10 python batches not found in %r (set data.params.root or $%s); "
                "using the embedded animal-mnist silhouettes at 3x32x32 instead.",
                self.root,
                ENV_VAR,
            )
            fallback = EmbeddedLoader(self.batch_size, dataset="animal", size=32, channels=3)
            return fallback._make_datasets()
        made = [
            ImageLabelDataset(*read_batches(folder, names))
            for names in (TRAIN_BATCHES, TEST_BATCHES)
        ]
        logger.info("CIFAR-10 from %s: %d train, %d test", folder, *map(len, made))
        return made[0], made[1]
