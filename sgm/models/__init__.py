"""Diffusion and autoencoder engines (LightningModules)."""

from __future__ import annotations

_LAZY = {
    "AutoencodingEngine": "sgm.models.autoencoder",
    "DiffusionEngine": "sgm.models.diffusion",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sgm.models' has no attribute {name!r}")
