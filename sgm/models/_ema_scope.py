"""Swap a module's EMA weights in for the length of a block, for both engines."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from ..modules.ema import LitEma

logger = logging.getLogger(__name__)


@contextmanager
def ema_weights(
    ema: LitEma | None, module: nn.Module, context: str | None = None
) -> Iterator[None]:
    """Run the block with ``ema``'s averages in ``module``'s parameters, then put the
    training weights back (also on error). ``ema=None`` leaves the weights alone;
    ``context`` names the caller in the log lines."""
    if ema is None:
        yield None
        return
    ema.store(module.parameters())
    ema.copy_to(module)
    if context is not None:
        logger.info("%s: switched to EMA weights", context)
    try:
        yield None
    finally:
        ema.restore(module.parameters())
        if context is not None:
            logger.info("%s: restored training weights", context)
