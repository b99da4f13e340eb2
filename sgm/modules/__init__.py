"""Network building blocks; ``sgm.modules.GeneralConditioner`` is the config path."""

from __future__ import annotations

UNCONDITIONAL_CONFIG = {
    "target": "sgm.modules.GeneralConditioner",
    "params": {"emb_models": []},
}


def __getattr__(name: str):
    if name == "GeneralConditioner":
        from .encoders.modules import GeneralConditioner

        return GeneralConditioner
    raise AttributeError(f"module 'sgm.modules' has no attribute {name!r}")
