"""Loss weightings under their older module path (same classes as ``loss_weighting``)."""

from __future__ import annotations

from .loss_weighting import (
    DiffusionLossWeighting,
    EDMWeighting,
    EpsWeighting,
    UnitWeighting,
    VWeighting,
)

__all__ = [
    "DiffusionLossWeighting",
    "EDMWeighting",
    "EpsWeighting",
    "UnitWeighting",
    "VWeighting",
]
