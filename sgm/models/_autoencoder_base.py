"""``AbstractAutoencoder``: the base of every first stage (input key, EMA, checkpoints)."""

from __future__ import annotations

import logging
import os
from abc import abstractmethod
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any

import pytorch_lightning as pl
import torch

from ..checkpoint import compare_state_dict, load_state_dict
from ..errors import CheckpointError
from ..modules.ema import LitEma
from ..util import instantiate_from_config
from ._ema_scope import ema_weights
from ._optimizer import instantiate_optimizer

logger = logging.getLogger(__name__)

# Subtrees a checkpoint may lack or carry extra: training losses (LPIPS,
# discriminator) and EMA copies are not needed to encode or decode.
OPTIONAL_PREFIXES = ("loss.", "model_ema.")
EMBEDDED_PREFIX = "first_stage_model."


class AbstractAutoencoder(pl.LightningModule):
    """Base of all first stages: input key, optional EMA, checkpoint loading."""

    def __init__(
        self,
        ema_decay: float | None = None,
        monitor: str | None = None,
        input_key: str = "jpg",
    ):
        super().__init__()
        self.input_key = input_key
        self.use_ema = ema_decay is not None
        if monitor is not None:
            self.monitor = monitor
        if self.use_ema:
            self.model_ema = LitEma(self, decay=ema_decay)
            logger.info("Keeping EMAs of %d.", len(list(self.model_ema.buffers())))
        self.automatic_optimization = False

    def apply_ckpt(self, ckpt: None | str | os.PathLike | Mapping[str, Any]) -> None:
        """Load weights: a file path, or a ``{target, params}`` engine called with the model."""
        if ckpt is None:
            return
        if isinstance(ckpt, (str, os.PathLike)):
            self.load_autoencoder_checkpoint(ckpt)
            return
        engine = instantiate_from_config(ckpt)
        engine(self)

    def load_autoencoder_checkpoint(self, path: str | os.PathLike) -> None:
        """Strictly load this autoencoder's keys from ``path``.

        Keys may be bare (``encoder.*``) or embedded in a diffusion checkpoint
        (``first_stage_model.encoder.*``, other top-level keys are then ignored).
        Training-only subtrees (``loss.*``, ``model_ema.*``) may be absent or extra.
        """
        state = load_state_dict(path)
        if any(k.startswith(EMBEDDED_PREFIX) for k in state):
            state = {
                k[len(EMBEDDED_PREFIX) :]: v
                for k, v in state.items()
                if k.startswith(EMBEDDED_PREFIX)
            }
        report = compare_state_dict(self, state)
        missing = [k for k in report.missing if not k.startswith(OPTIONAL_PREFIXES)]
        unexpected = [k for k in report.unexpected if not k.startswith(OPTIONAL_PREFIXES)]
        if missing or unexpected or report.wrong_shape:
            report.missing, report.unexpected = missing, unexpected
            raise CheckpointError(
                f"{path} does not match {type(self).__name__}: {report.counts()}",
                details=report.lines(max_lines=100),
            )
        own = self.state_dict()
        self.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
        logger.info("Loaded %s from %s", type(self).__name__, path)

    @abstractmethod
    def get_input(self, batch: Any) -> Any:
        raise NotImplementedError()

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        if self.use_ema:
            self.model_ema(self)

    def ema_scope(self, context: str | None = None) -> AbstractContextManager[None]:
        """Temporarily swap in the EMA weights (no-op without EMA)."""
        return ema_weights(self.model_ema if self.use_ema else None, self, context)

    @abstractmethod
    def encode(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise NotImplementedError("encode()-method of abstract base class called")

    @abstractmethod
    def decode(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise NotImplementedError("decode()-method of abstract base class called")

    def instantiate_optimizer_from_config(
        self, params: Any, lr: float, cfg: Mapping[str, Any]
    ) -> torch.optim.Optimizer:
        """``target(params, lr=lr, **params)`` from an optimizer config (``params`` may be
        missing or null)."""
        return instantiate_optimizer(params, lr, cfg)

    def configure_optimizers(self) -> Any:
        raise NotImplementedError()
