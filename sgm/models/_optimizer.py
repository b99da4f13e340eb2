"""Optimizers from ``{target, params}`` configs, for both engines."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from ..errors import ConfigError
from ..util import get_obj_from_str

logger = logging.getLogger(__name__)


def instantiate_optimizer(
    params: Iterable[Any], lr: float, config: Mapping[str, Any]
) -> torch.optim.Optimizer:
    """``target(params, lr=lr, **params)`` from an optimizer config; ``params`` may be
    missing or null (the optimizer's defaults)."""
    if "target" not in config:
        raise ConfigError(f"optimizer config needs a 'target'; got keys {sorted(config)}")
    options = config.get("params") or {}
    if not isinstance(options, Mapping):
        raise ConfigError(f"optimizer params must be a mapping, got {type(options).__name__}")
    logger.info("optimizer %s, lr %g", config["target"], lr)
    return get_obj_from_str(config["target"])(params, lr=lr, **options)
