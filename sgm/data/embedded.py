"""Small real datasets that ship inside installed packages: no download needed.

``animal``: animal-mnist, 10,000 28x28 silhouettes of 10 animals (1,000 each).
``digits``: scikit-learn's 1,797 8x8 handwritten digits.
"""

from __future__ import annotations

import gzip
import logging
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError, InputError
from ._safe_pickle import load_numpy_pickle

logger = logging.getLogger(__name__)

ANIMAL_CLASSES = (
    "bear",
    "bird",
    "cat",
    "cow",
    "dog",
    "elephant",
    "giraffe",
    "horse",
    "sheep",
    "zebra",
)
DIGIT_CLASSES = tuple(str(i) for i in range(10))
EMBEDDED = ("animal", "digits")


@dataclass(frozen=True)
class ArrayData:
    """Images as uint8 ``(N, H, W)`` and integer labels ``(N,)``, with class names."""

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]


@lru_cache(maxsize=2)
def load_animal_mnist() -> ArrayData:
    """The animal-mnist package's 10,000 silhouettes (read with a numpy-only unpickler)."""
    from importlib import resources

    try:
        root = resources.files("animal_mnist") / "data" / "Animal_MNIST"
    except ModuleNotFoundError:
        raise ConfigError(
            "the embedded 'animal' dataset needs the animal-mnist package: "
            "pip install --no-deps animal-mnist==0.4"
        ) from None
    arrays = []
    for name in ("animal_data_version_3.gz", "animal_label_version_3.gz"):
        with gzip.open(root / name, "rb") as stream:
            arrays.append(load_numpy_pickle(stream, source=name))
    images, labels = arrays
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise InputError(f"animal-mnist data has unexpected shapes {images.shape}, {labels.shape}")
    return ArrayData(images.astype(np.uint8), labels.astype(np.int64), ANIMAL_CLASSES)


@lru_cache(maxsize=2)
def load_sklearn_digits() -> ArrayData:
    """scikit-learn's 8x8 digits, scaled from 0..16 to 0..255."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ConfigError(
            "the embedded 'digits' dataset needs scikit-learn: pip install scikit-learn"
        ) from None
    digits = load_digits()
    images = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return ArrayData(images, digits.target.astype(np.int64), DIGIT_CLASSES)


def load_embedded(name: str) -> ArrayData:
    """One of ``EMBEDDED`` by name."""
    if name == "animal":
        return load_animal_mnist()
    if name == "digits":
        return load_sklearn_digits()
    raise ConfigError(f"unknown embedded dataset {name!r}; expected one of {EMBEDDED}")


def split_indices(n: int, val_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fixed shuffled split of ``range(n)`` into train and validation indices."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


class ImageLabelDataset(Dataset):
    """``{"jpg": float (C, H, W) in [-1, 1], "cls": int}`` items from uint8 arrays."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, size: int | None = None):
        x = torch.from_numpy(np.array(images, dtype=np.float32)).div(127.5).sub(1.0)
        if x.ndim == 3:
            x = x.unsqueeze(1)
        elif x.ndim == 4 and x.shape[-1] in (1, 3):
            x = x.permute(0, 3, 1, 2)
        if size is not None and tuple(x.shape[-2:]) != (size, size):
            x = torch.nn.functional.interpolate(
                x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
            x = x.clamp(-1.0, 1.0)
        self.images = x.contiguous()
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"jpg": self.images[i], "cls": int(self.labels[i])}
