"""Datamodules: embedded toy data, MNIST / CIFAR-10 files, webdataset shards."""

from __future__ import annotations

_LAZY = {
    "StableDataModuleFromConfig": "sgm.data.dataset",
    "MNISTLoader": "sgm.data.mnist",
    "CIFAR10Loader": "sgm.data.cifar10",
    "EmbeddedLoader": "sgm.data.toy",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sgm.data' has no attribute {name!r}")
