"""Lightning callbacks for ``main.py``: run setup, image logging, signal checkpoints."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from pytorch_lightning.utilities import rank_zero_only

from .. import precision
from ..util import isheatmap
from .images import make_grid, save_png, to_uint8

logger = logging.getLogger(__name__)


def _write_yaml(config: Any, path: Path) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    OmegaConf.save(config, tmp)
    os.replace(tmp, path)


class SetupCallback(pl.Callback):
    """Create the run folders and save the merged project and lightning configs."""

    def __init__(
        self,
        resume: str,
        now: str,
        logdir: str,
        ckptdir: str,
        cfgdir: str,
        config: Any,
        lightning_config: Any,
        debug: bool = False,
        ckpt_name: str | None = None,
    ):
        super().__init__()
        self.resume, self.now, self.debug, self.ckpt_name = resume, now, debug, ckpt_name
        self.logdir, self.ckptdir, self.cfgdir = logdir, ckptdir, cfgdir
        self.config, self.lightning_config = config, lightning_config

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, KeyboardInterrupt) and not self.debug and trainer.global_step:
            save_checkpoint(trainer, os.path.join(self.ckptdir, self.ckpt_name or "last.ckpt"))

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_rank != 0:
            return
        for folder in (self.logdir, self.ckptdir, self.cfgdir):
            os.makedirs(folder, exist_ok=True)
        cfgdir = Path(self.cfgdir)
        _write_yaml(self.config, cfgdir / f"{self.now}-project.yaml")
        _write_yaml(
            OmegaConf.create({"lightning": self.lightning_config}),
            cfgdir / f"{self.now}-lightning.yaml",
        )
        logger.info("Run folder: %s", self.logdir)


def save_checkpoint(trainer: pl.Trainer, path: str) -> None:
    """``trainer.save_checkpoint`` to a temporary name, then rename (all ranks call it)."""
    tmp = os.path.join(os.path.dirname(path), f".tmp-{os.path.basename(path)}")
    trainer.save_checkpoint(tmp, weights_only=False)  # full training state, for --resume
    if trainer.is_global_zero:
        os.replace(tmp, path)
        logger.info("Saved checkpoint %s at step %d", path, trainer.global_step)


class SignalCheckpoint(pl.Callback):
    """Save ``last.ckpt`` when training ends, and on SIGUSR1 / SIGTERM before stopping.

    The signal is noticed at the end of the current training step, so the checkpoint
    holds a consistent state (weights, optimizer, step count) to ``--resume`` from.
    """

    def __init__(self, ckptdir: str, filename: str = "last.ckpt"):
        super().__init__()
        self.path = os.path.join(ckptdir, filename)
        self.received: int | None = None
        self._saved_step: int | None = None

    def _on_usr1(self, signum: int, frame: Any) -> None:
        self.received = signum

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if hasattr(signal, "SIGUSR1") and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGUSR1, self._on_usr1)

    def _signalled(self, trainer: pl.Trainer) -> bool:
        if trainer.received_sigterm and self.received is None:
            self.received = int(signal.SIGTERM)
        flag = self.received is not None
        if trainer.world_size > 1:
            flag = trainer.strategy.reduce_boolean_decision(flag, all=False)
        return flag

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not self._signalled(trainer):
            return
        self.received = self.received or int(signal.SIGUSR1)
        save_checkpoint(trainer, self.path)
        self._saved_step = trainer.global_step
        trainer.should_stop = True

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """Lightning stops fit with ``SIGTERMException`` where the signal finds it: during
        validation, or between a step's ``on_train_batch_end`` and the next step. The
        checkpoint of the last finished step is written there too."""
        from pytorch_lightning.trainer.states import TrainerFn
        from pytorch_lightning.utilities.exceptions import SIGTERMException

        if not (isinstance(exception, SIGTERMException) or trainer.received_sigterm):
            return
        if self.received is None:
            self.received = int(signal.SIGTERM)
        fitting = trainer.state.fn == TrainerFn.FITTING
        if fitting and trainer.global_step > 0 and self._saved_step != trainer.global_step:
            save_checkpoint(trainer, self.path)
            self._saved_step = trainer.global_step

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._saved_step != trainer.global_step:
            save_checkpoint(trainer, self.path)
            self._saved_step = trainer.global_step


def progress_bar() -> pl.Callback | None:
    """Lightning's rich progress bar, labelled "Epoch N" (or "Epoch N/M" when the run has an
    epoch limit) rather than "Epoch N/-2" for step-limited runs; None without rich."""
    from pytorch_lightning.callbacks import RichProgressBar
    from pytorch_lightning.callbacks.progress.rich_progress import _RICH_AVAILABLE

    if not _RICH_AVAILABLE:
        return None

    class EpochProgressBar(RichProgressBar):
        def _get_train_description(self, current_epoch: int) -> str:
            description = f"Epoch {current_epoch}"
            max_epochs = self.trainer.max_epochs
            if max_epochs is not None and max_epochs > 0:
                description += f"/{max_epochs - 1}"
            if len(self.validation_description) > len(description):
                description = f"{description:{len(self.validation_description)}}"
            return description

    return EpochProgressBar()


class ImageLogger(pl.Callback):
    """Every ``batch_frequency`` steps, save ``pl_module.log_images(batch)`` as PNG grids.

    Files: ``<logdir>/images/<split>/<key>_gs-<step>_e-<epoch>_b-<batch>.png``. With
    ``increase_log_steps`` it also logs at steps 1, 2, 4, ... below the frequency.
    """

    def __init__(
        self,
        batch_frequency: int,
        max_images: int,
        clamp: bool = True,
        increase_log_steps: bool = True,
        rescale: bool = True,
        disabled: bool = False,
        log_on_batch_idx: bool = False,
        log_first_step: bool = False,
        log_images_kwargs: dict | None = None,
        log_before_first_step: bool = False,
        enable_autocast: bool = True,
    ):
        super().__init__()
        self.batch_freq = max(int(batch_frequency), 1)
        self.max_images = int(max_images)
        self.clamp, self.rescale, self.disabled = clamp, rescale, disabled
        self.log_on_batch_idx = log_on_batch_idx
        self.log_first_step, self.log_before_first_step = log_first_step, log_before_first_step
        self.log_images_kwargs = dict(log_images_kwargs or {})
        self.enable_autocast = enable_autocast
        self.log_steps = [2**n for n in range(int(np.log2(self.batch_freq)) + 1)]
        if not increase_log_steps:
            self.log_steps = [self.batch_freq]

    def check_frequency(self, check_idx: int) -> bool:
        """Whether to log at ``check_idx`` (step or batch index)."""
        if (check_idx % self.batch_freq == 0 or check_idx in self.log_steps) and (
            check_idx > 0 or self.log_first_step
        ):
            if self.log_steps:
                self.log_steps.pop(0)
            return True
        return False

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """The accelerator's autocast while sampling (``enable_autocast``), else float32."""
        if self.enable_autocast and device.type != "cpu":
            return precision.accelerator_autocast(device)
        return precision.float32(device)

    @staticmethod
    def _save_dir(trainer: pl.Trainer) -> str:
        return getattr(trainer, "logdir", None) or trainer.default_root_dir

    @rank_zero_only
    def log_local(
        self,
        save_dir: str,
        split: str,
        images: dict,
        global_step: int,
        current_epoch: int,
        batch_idx: int,
    ) -> None:
        """Write one grid per image key."""
        root = Path(save_dir) / "images" / split
        for key, value in images.items():
            if not isinstance(value, torch.Tensor) or value.ndim != 4:
                continue
            grid = make_grid(value, nrow=4)
            if self.rescale:
                grid = (grid + 1.0) / 2.0
            name = f"{key}_gs-{global_step:06}_e-{current_epoch:06}_b-{batch_idx:06}.png"
            save_png(to_uint8(grid), root / name)

    @rank_zero_only
    def log_img(
        self, pl_module: pl.LightningModule, batch: Any, batch_idx: int, split: str = "train"
    ) -> None:
        """Sample and save images if the step is due."""
        check_idx = batch_idx if self.log_on_batch_idx else pl_module.global_step
        if not (
            self.check_frequency(check_idx)
            and callable(getattr(pl_module, "log_images", None))
            and self.max_images > 0
        ):
            return
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad(), self._autocast(pl_module.device):
            images = pl_module.log_images(batch, split=split, **self.log_images_kwargs)
        for key in images:
            if isinstance(images[key], torch.Tensor):
                value = images[key][: self.max_images].detach().float().cpu()
                if self.clamp and not isheatmap(value):
                    value = value.clamp(-1.0, 1.0)
                images[key] = value
        trainer = pl_module.trainer
        self.log_local(
            self._save_dir(trainer),
            split,
            images,
            pl_module.global_step,
            pl_module.current_epoch,
            batch_idx,
        )
        if was_training:
            pl_module.train()

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not self.disabled and (pl_module.global_step > 0 or self.log_first_step):
            self.log_img(pl_module, batch, batch_idx, split="train")

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.log_before_first_step and pl_module.global_step == 0:
            self.log_img(pl_module, batch, batch_idx, split="train")

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self.disabled and pl_module.global_step > 0:
            self.log_img(pl_module, batch, batch_idx, split="val")
