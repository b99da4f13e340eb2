"""Building webdataset pipelines and loaders from plain configs."""

from __future__ import annotations

import glob
import itertools
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch

from ..config import instantiate_from_config
from ..errors import ConfigError, InputError, SgmError

logger = logging.getLogger(__name__)

PIPELINE_KEYS = ("shardshuffle", "sample_shuffle", "resampled", "epoch_length", "seed")
LOADER_KEYS = ("batch_size", "num_workers", "partial", "prefetch_factor", "pin_memory")
SDATA_PREFIX = "sdata.mappers."


def _is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


def _has_glob(name: str) -> bool:
    return any(c in name for c in "*?[")


def expand_urls(urls: Sequence[str] | str | None, where: str) -> list[str]:
    """Shard names from ``urls``: brace patterns and globs are expanded, a local folder
    stands for its ``*.tar`` files. Every local shard is checked (:func:`check_shard`);
    a pattern that matches nothing, or an empty ``urls``, is a ``ConfigError`` naming the
    pattern and ``<where>.datapipeline.urls``."""
    import webdataset as wds

    option = f"{where}.datapipeline.urls"
    if isinstance(urls, (str, os.PathLike)):
        urls = [os.fspath(urls)]
    if urls is None or not isinstance(urls, Sequence) or not urls:
        raise ConfigError(
            f"{option} is empty ({urls!r}): give shard files, a brace pattern "
            "(shards/{000000..000009}.tar), a glob or a folder of .tar shards"
        )
    out: list[str] = []
    for url in urls:
        url = str(url)
        if not url.strip():
            raise ConfigError(f"{option}: an empty shard pattern ({url!r}) in {list(urls)!r}")
        if _is_local(url) and os.path.isdir(url):
            found = sorted(glob.glob(os.path.join(glob.escape(url), "*.tar")))
            if not found:
                raise ConfigError(f"{option}: no .tar shards in the folder {url}")
            out += found
            continue
        names = wds.shardlists.expand_urls(url)
        if not _is_local(url):
            out += names
            continue
        matched: list[str] = []
        for name in names:
            matched += sorted(glob.glob(name)) if _has_glob(name) else [name]
        missing = [name for name in matched if not os.path.isfile(name)]
        if not matched or len(missing) == len(matched):
            tried = f" (tried {len(matched)} names, e.g. {matched[0]})" if matched else ""
            raise ConfigError(f"{option}: the pattern {url!r} matches no file{tried}")
        if missing:
            raise ConfigError(
                f"{option}: shard {missing[0]} not found ({len(missing)} of the "
                f"{len(matched)} shards of {url!r} are missing)"
            )
        out += matched
    for url in out:
        if _is_local(url):
            check_shard(url)
        _register_fsspec(url)
    return out


_COMPRESSED = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd")
_BLOCK = 512


def check_shard(path: str) -> None:
    """A cheap look at a local shard (its first block and its size): an ``InputError``
    naming it unless it can be read and starts like a tar archive (or a compressed one)."""
    import tarfile

    try:
        with open(path, "rb") as file:
            head = file.read(_BLOCK)
            size = os.fstat(file.fileno()).st_size
    except OSError as error:
        raise InputError(f"shard {path}: cannot be read ({error.strerror or error})") from None
    if not head:
        raise InputError(f"shard {path}: the file is empty, not a tar archive")
    if head.startswith(_COMPRESSED):
        return
    valid = len(head) == _BLOCK
    if valid and head != bytes(_BLOCK):
        try:
            tarfile.TarInfo.frombuf(head, "utf-8", "surrogateescape")
        except tarfile.HeaderError:
            valid = False
    if not valid:
        raise InputError(f"shard {path}: not a tar archive (its first block is no tar header)")
    if size % _BLOCK:
        raise InputError(
            f"shard {path}: truncated tar archive ({size} bytes, not whole 512-byte blocks)"
        )


class ShardReadError(InputError):
    """A shard that could not be opened or read as a tar archive while iterating."""


def _failed_shard(exn: Exception) -> str | None:
    """The shard webdataset names in ``exn``: its tar expander adds ``(stream, url)``."""
    args = exn.args
    if isinstance(exn, OSError) and exn.filename:
        return str(exn.filename)
    if len(args) >= 3 and isinstance(args[-1], str) and not isinstance(args[-2], (str, int)):
        return args[-1]
    return None


def _shard_read_failed(exn: Exception) -> bool:
    """webdataset's handler of shard reading: a shard that cannot be opened or read (not a
    tar, truncated, vanished) stops the run with an error naming it; never skipped in
    silence, so a resampled pipeline cannot spin forever over broken shards.

    Errors from inside a tar stream come without the shard's name: they are raised again
    as :class:`ShardReadError`, and webdataset hands them back here with the name added."""
    shard = _failed_shard(exn)
    if isinstance(exn, ShardReadError):
        reason = str(exn.args[0])
        if shard is None or reason.startswith("shard "):
            raise ShardReadError(reason) from None
    else:
        text = str(exn.args[0]).split(" @ <", 1)[0] if exn.args else ""
        if isinstance(exn, OSError):
            text = exn.strerror or text
        reason = f"{type(exn).__name__}: {' '.join(text.split())}" if text else type(exn).__name__
    if shard is None:
        raise ShardReadError(reason) from None
    raise ShardReadError(f"shard {shard}: cannot be read as a tar archive ({reason})") from None


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
        handler=_shard_read_failed,
        seed=options.get("seed"),
    )
    if options.get("sample_shuffle"):
        dataset = dataset.shuffle(int(options["sample_shuffle"]))
    from .image_caption import guarded_decoder, skip_undecodable  # sizes checked first

    for decoder in pipeline.get("decoders") or ["pil"]:
        dataset = dataset.decode(guarded_decoder(decoder), handler=skip_undecodable)
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


def check_loader(loader: Any, where: str) -> dict:
    """The ``<where>.loader`` mapping, checked: ``batch_size`` given, no unknown keys."""
    if not isinstance(loader, Mapping):
        raise ConfigError(f"{where}.loader: expected a mapping, got {loader!r}")
    loader = dict(loader)
    if "batch_size" not in loader:
        raise ConfigError(f"{where}.loader: missing key 'batch_size'")
    unknown = set(loader) - set(LOADER_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}.loader: unknown keys {sorted(unknown)}; accepted {list(LOADER_KEYS)}"
        )
    return loader


def worker_error(error: SgmError) -> SgmError:
    """``error`` as raised in a DataLoader worker, without torch's "Caught X in DataLoader
    worker process N. Original Traceback ..." wrapping: the worker's own message."""
    text = str(error)
    if not text.startswith("Caught ") or "Original Traceback" not in text:
        return error
    kind = type(error)
    for name in (f"{kind.__module__}.{kind.__qualname__}: ", f"{kind.__qualname__}: "):
        at = text.rfind("\n" + name)
        if at >= 0:
            lines = text[at + 1 + len(name) :].strip().splitlines() or [kind.__name__]
            return kind(lines[0], details=lines[1:])
    return error


def _named_errors(batches: Iterator[Any]) -> Iterator[Any]:
    try:
        yield from batches
    except SgmError as error:
        unwrapped = worker_error(error)
        if unwrapped is error:
            raise
        raise unwrapped from None


def build_loader(pipeline: Any, loader: Any, dummy: bool = False, where: str = "data") -> Any:
    """A ``WebLoader`` over the batched pipeline (batches are made inside the workers).

    An error raised in a worker (a broken shard, a sample without a field) reaches the
    caller as the worker raised it, with its own one-line message."""
    import webdataset as wds

    pipeline, loader = dict(pipeline), check_loader(loader, where)
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
    ).compose(_named_errors)
