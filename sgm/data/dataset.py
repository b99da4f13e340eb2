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
from ._webdataset import build_loader

logger = logging.getLogger(__name__)


def _plain(config: Any) -> dict:
    if config is None:
        return {}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(config, DictConfig):
            return OmegaConf.to_container(config, resolve=True)
    except ImportError:
        pass
    if not isinstance(config, Mapping):
        raise ConfigError(f"expected a mapping, got {config!r}")
    return dict(config)


def _check_split(name: str, config: dict) -> None:
    for key in ("datapipeline", "loader"):
        if key not in config:
            raise ConfigError(
                f"data.params.{name}: missing key {key!r} (expected 'datapipeline' and 'loader')"
            )


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
        self.train_config = _plain(train)
        _check_split("train", self.train_config)
        self.val_config = _plain(validation) if validation is not None else None
        self.test_config = _plain(test) if test is not None else None
        for name, cfg in (("validation", self.val_config), ("test", self.test_config)):
            if cfg is not None:
                _check_split(name, cfg)
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
