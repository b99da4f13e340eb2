"""``StableDataModuleFromConfig``: a Lightning datamodule over webdataset tar shards.

Config (per split)::

    datapipeline:
      urls: [/data/shards/{000000..000099}.tar, s3://bucket/x-{0..9}.tar, /data/dir]
      pipeline_config: {shardshuffle: 10000, sample_shuffle: 10000,
                        resampled: false, epoch_length: null}
      decoders: [pil]
      postprocessors: [{target: sgm.data.mappers.Rescaler, params: {...}}, ...]
      batch_postprocessors: [...]   # applied to each collated batch
    loader: {batch_size: 64, num_workers: 6, partial: true}

Shards are split across nodes/ranks and then across dataloader workers.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl

from ..errors import ConfigError
from ._webdataset import build_loader, check_loader, expand_urls

logger = logging.getLogger(__name__)


def _split(name: str, config: Any) -> dict:
    """The split's config, checked: a mapping with ``datapipeline`` and ``loader``, its
    loader keys known, its shard patterns matching readable tar shards (so a bad data
    config stops a run before the model is built)."""
    where = f"data.params.{name}"
    if not isinstance(config, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {config!r}")
    for key in ("datapipeline", "loader"):
        if key not in config:
            raise ConfigError(
                f"{where}: missing key {key!r} (expected 'datapipeline' and 'loader')"
            )
    if not isinstance(config["datapipeline"], Mapping):
        raise ConfigError(
            f"{where}.datapipeline: expected a mapping, got {config['datapipeline']!r}"
        )
    check_loader(config["loader"], where)
    expand_urls(config["datapipeline"].get("urls"), where)
    return dict(config)


class StableDataModuleFromConfig(pl.LightningDataModule):
    """Train / validation / test loaders from webdataset configs (see module docstring).

    ``validation`` and ``test`` default to the train config; ``skip_val_loader``
    disables validation; ``dummy`` repeats the first sample forever (debugging).
    """

    def __init__(
        self,
        train: Mapping,
        validation: Mapping | None = None,
        test: Mapping | None = None,
        skip_val_loader: bool = False,
        dummy: bool = False,
    ):
        super().__init__()
        self.train_config = _split("train", train)
        self.val_config = _split("validation", validation) if validation is not None else None
        self.test_config = _split("test", test) if test is not None else None
        if self.val_config is None and not skip_val_loader:
            logger.info("no validation config: validating on the train data")
            self.val_config = self.train_config
        self.skip_val_loader = bool(skip_val_loader)
        self.dummy = bool(dummy)

    def _build(self, config: dict, split: str) -> Any:
        return build_loader(
            config["datapipeline"], config["loader"], dummy=self.dummy, where=f"data.params.{split}"
        )

    def train_dataloader(self) -> Any:
        return self._build(self.train_config, "train")

    def val_dataloader(self) -> Any:
        if self.skip_val_loader:
            return []
        return self._build(self.val_config, "validation")

    def test_dataloader(self) -> Any:
        return self._build(self.test_config or self.train_config, "test")
