"""Building webdataset pipelines and loaders from plain configs."""

from __future__ import annotations

import glob
import itertools
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch

from ..config import instantiate_from_config
from ..errors import ConfigError

logger = logging.getLogger(__name__)

PIPELINE_KEYS = ("shardshuffle", "sample_shuffle", "resampled", "epoch_length", "seed")
LOADER_KEYS = ("batch_size", "num_workers", "partial", "prefetch_factor", "pin_memory")
SDATA_PREFIX = "sdata.mappers."


def expand_urls(urls: Sequence[str] | str, where: str) -> list[str]:
    """Brace-expand shard patterns; a local directory stands for its ``*.tar`` files."""
    import webdataset as wds

    if isinstance(urls, str):
        urls = [urls]
    out: list[str] = []
    for url in urls:
        url = str(url)
        if os.path.isdir(url):
            found = sorted(glob.glob(os.path.join(url, "*.tar")))
            if not found:
                raise ConfigError(f"{where}.datapipeline.urls: no .tar shards in {url}")
            out += found
        else:
            out += wds.shardlists.expand_urls(url)
    if not out:
        raise ConfigError(f"{where}.datapipeline.urls: no shards given")
    for url in out:
        if "://" not in url and not url.startswith("pipe:") and not os.path.isfile(url):
            raise ConfigError(f"{where}.datapipeline.urls: shard not found: {url}")
        _register_fsspec(url)
    return out


def _fsspec_open(url: str, mode: str = "rb", bufsize: int = 8192, **kwargs: Any):
    import fsspec

    return fsspec.open(url, mode).open()


def _register_fsspec(url: str) -> None:
    import importlib

    gopen = importlib.import_module("webdataset.gopen")  # the module, not the function
    scheme = urlparse(url).scheme
    if scheme and scheme not in gopen.gopen_schemes:
        gopen.gopen_schemes[scheme] = _fsspec_open


def _postprocessor(config: Any, where: str) -> Callable:
    if isinstance(config, dict) and str(config.get("target", "")).startswith(SDATA_PREFIX):
        try:
            import sdata  # noqa: F401
        except ImportError:
            name = config["target"][len(SDATA_PREFIX) :]
            config = {**config, "target": f"sgm.data.mappers.{name}"}
    return instantiate_from_config(config, key=where)


def collate(samples: list[dict]) -> dict:
    """Stack tensors and numbers; lists of numbers become ``(B, n)`` tensors; else lists."""
    batch = {}
    for key in samples[0]:
        values = [s[key] for s in samples if key in s]
        if len(values) != len(samples):
            raise ConfigError(f"key {key!r} is missing from some samples of a batch")
        first = values[0]
        if isinstance(first, torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(first, np.ndarray):
            batch[key] = torch.from_numpy(np.stack(values))
        elif isinstance(first, (bool, int, float, np.number)):
            batch[key] = torch.tensor(values)
        elif (
            isinstance(first, (list, tuple))
            and first
            and all(isinstance(v, (int, float)) for v in first)
        ):
            batch[key] = torch.tensor(values)
        else:
            batch[key] = values
    return batch


def build_dataset(pipeline: dict, loader: dict, dummy: bool, where: str) -> Any:
    """The webdataset pipeline: shards -> samples -> decoded -> mapped -> batches."""
    import webdataset as wds

    options = dict(pipeline.get("pipeline_config") or {})
    unknown = set(options) - set(PIPELINE_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}.datapipeline.pipeline_config: unknown keys "
            f"{sorted(unknown)}; accepted {list(PIPELINE_KEYS)}"
        )
    urls = expand_urls(pipeline.get("urls"), where)
    resampled = bool(options.get("resampled", False))
    shardshuffle = options.get("shardshuffle") or False
    dataset = wds.WebDataset(
        urls,
        resampled=resampled,
        shardshuffle=False if resampled else shardshuffle,
        nodesplitter=None if resampled else wds.split_by_node,
        workersplitter=wds.split_by_worker,
        empty_check=False,
        handler=wds.warn_and_continue,
        seed=options.get("seed"),
    )
    if options.get("sample_shuffle"):
        dataset = dataset.shuffle(int(options["sample_shuffle"]))
    for decoder in pipeline.get("decoders") or ["pil"]:
        dataset = dataset.decode(decoder, handler=wds.warn_and_continue)
    for i, config in enumerate(pipeline.get("postprocessors") or []):
        dataset = dataset.map(_postprocessor(config, f"{where}.datapipeline.postprocessors.{i}"))
    if dummy:
        dataset = _Repeat(dataset)
    dataset = dataset.batched(
        int(loader["batch_size"]), collation_fn=collate, partial=bool(loader.get("partial", True))
    )
    for i, config in enumerate(pipeline.get("batch_postprocessors") or []):
        step = _postprocessor(config, f"{where}.datapipeline.batch_postprocessors.{i}")
        dataset = dataset.compose(wds.map(step))
    if options.get("epoch_length"):
        dataset = dataset.with_epoch(int(options["epoch_length"]))
    return dataset


class _Repeat(torch.utils.data.IterableDataset):
    """The first sample of ``dataset`` forever (for overfitting/debugging)."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __iter__(self):
        first = next(iter(self.dataset))
        return itertools.repeat(first)

    def batched(self, *args: Any, **kwargs: Any) -> Any:
        import webdataset as wds

        return wds.DataPipeline(self, wds.batched(*args, **kwargs))


def build_loader(pipeline: Any, loader: Any, dummy: bool = False, where: str = "data") -> Any:
    """A ``WebLoader`` over the batched pipeline (batches are made inside the workers)."""
    import webdataset as wds

    pipeline, loader = dict(pipeline), dict(loader)
    if "batch_size" not in loader:
        raise ConfigError(f"{where}.loader: missing key 'batch_size'")
    unknown = set(loader) - set(LOADER_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}.loader: unknown keys {sorted(unknown)}; accepted {list(LOADER_KEYS)}"
        )
    dataset = build_dataset(pipeline, loader, dummy, where)
    workers = int(loader.get("num_workers", 0))
    extra = {"prefetch_factor": loader.get("prefetch_factor", 2)} if workers > 0 else {}
    return wds.WebLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        pin_memory=bool(loader.get("pin_memory", False)),
        **extra,
    )
