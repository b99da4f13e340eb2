"""Datamodule over the embedded datasets (see ``sgm.data.embedded``)."""

from __future__ import annotations

import logging

from torch.utils.data import Dataset

from ._loader import DictLoader
from .embedded import ImageLabelDataset, load_embedded, split_indices

logger = logging.getLogger(__name__)


class EmbeddedLoader(DictLoader):
    """``{"jpg", "cls"}`` batches from an embedded dataset (``animal`` or ``digits``).

    ``size`` resizes the square images; ``channels`` repeats the gray channel;
    ``val_fraction`` of the data (a fixed split) is held out for validation.
    """

    def __init__(
        self,
        batch_size: int,
        dataset: str = "animal",
        num_workers: int = 0,
        prefetch_factor: int = 2,
        shuffle: bool = True,
        size: int | None = None,
        channels: int = 1,
        val_fraction: float = 0.1,
    ):
        super().__init__(batch_size, num_workers, prefetch_factor, shuffle)
        self.dataset = dataset
        self.size = size
        self.channels = int(channels)
        self.val_fraction = float(val_fraction)
        self.classes = load_embedded(dataset).classes

    def _make_datasets(self) -> tuple[Dataset, Dataset]:
        data = load_embedded(self.dataset)
        train, val = split_indices(len(data.labels), self.val_fraction)
        made = []
        for idx in (train, val):
            ds = ImageLabelDataset(data.images[idx], data.labels[idx], size=self.size)
            if self.channels != 1:
                ds.images = ds.images.expand(-1, self.channels, -1, -1).contiguous()
            made.append(ds)
        logger.info(
            "embedded dataset %r: %d train, %d validation images of %s",
            self.dataset,
            len(train),
            len(val),
            tuple(made[0].images.shape[1:]),
        )
        return made[0], made[1]
