"""A Lightning datamodule over in-memory train/validation datasets."""

from __future__ import annotations

import logging
import os

import pytorch_lightning as pl
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError

logger = logging.getLogger(__name__)


def _check_positive(name: str, value: int) -> int:
    if int(value) != value or value < 0:
        raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def resolve_root(root: str | os.PathLike | None, env_var: str, default: str) -> str:
    """``root`` if given, else the environment variable, else ``default``."""
    return str(root or os.environ.get(env_var) or default)


class DictLoader(pl.LightningDataModule):
    """Train/validation/test loaders of dict items; the subclass fills the datasets."""

    def __init__(
        self,
        batch_size: int,
        num_workers: int = 0,
        prefetch_factor: int = 2,
        shuffle: bool = True,
    ):
        super().__init__()
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size!r}")
        self.batch_size = int(batch_size)
        self.num_workers = _check_positive("num_workers", num_workers)
        self.prefetch_factor = prefetch_factor
        self.shuffle = bool(shuffle)
        self.train_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None

    def _make_datasets(self) -> tuple[Dataset, Dataset]:
        raise NotImplementedError

    def _ensure(self) -> None:
        if self.train_dataset is None:
            self.train_dataset, self.test_dataset = self._make_datasets()

    def setup(self, stage: str | None = None) -> None:
        self._ensure()

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        extra = {}
        if self.num_workers > 0:
            extra = dict(prefetch_factor=self.prefetch_factor, persistent_workers=True)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            **extra,
        )

    def train_dataloader(self) -> DataLoader:
        self._ensure()
        return self._loader(self.train_dataset, self.shuffle)

    def val_dataloader(self) -> DataLoader:
        self._ensure()
        return self._loader(self.test_dataset, False)

    def test_dataloader(self) -> DataLoader:
        self._ensure()
        return self._loader(self.test_dataset, False)
