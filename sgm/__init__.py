"""sgm: config-driven diffusion models (SD 2.1, SDXL, SVD, SV3D, SV4D)."""

from __future__ import annotations

from . import _tv_compat

_tv_compat.install()

__version__ = "0.2.0"

_LAZY = {
    "AutoencodingEngine": "sgm.models.autoencoder",
    "DiffusionEngine": "sgm.models.diffusion",
    "get_configs_path": "sgm.util",
    "instantiate_from_config": "sgm.util",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sgm' has no attribute {name!r}")
