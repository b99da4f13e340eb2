"""Loss weightings under their older module path (``loss_weighting`` classes)."""

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
