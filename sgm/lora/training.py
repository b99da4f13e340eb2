"""Training an adapter with ``DiffusionEngine``: the engine hooks and an export callback.

``model.params.lora_config`` in a training YAML freezes the whole engine, adds the adapter
to the network, and makes Lightning checkpoints hold only the adapter (resuming rebuilds
the base from ``ckpt_path`` and loads the adapter on top). :class:`LoraExport` writes
``*.lora.safetensors`` files that diffusers' ``load_lora_weights`` reads.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from torch import nn

from ..errors import CheckpointError, ConfigError
from . import FORMATS, add_lora, network_of, save_lora
from ._kohya_names import text_embedders

logger = logging.getLogger(__name__)

ADAPTER_KEY_PARTS = (".lora_A.", ".lora_B.")


def _is_adapter_key(key: str) -> bool:
    return any(part in key for part in ADAPTER_KEY_PARTS)


def attach_lora(engine: nn.Module, config: Any) -> None:
    """Freeze ``engine`` and add a trainable adapter (``lora_config``) to its network."""
    if getattr(engine, "use_ema", False):
        raise ConfigError(
            "lora_config with use_ema: true is not supported (EMA tracks the "
            "full network); set model.params.use_ema: false"
        )
    for param in engine.parameters():
        param.requires_grad_(False)
    targets = add_lora(engine, config)
    for _, embedder in text_embedders(engine):  # text-encoder adapters need gradients
        if any(p.requires_grad for p in embedder.parameters()):
            embedder.is_trainable = True
    engine.strict_loading = False  # checkpoints hold only the adapter
    count = sum(p.numel() for p in engine.parameters() if p.requires_grad)
    logger.info(
        "LoRA on %d layers of %s: %d trainable parameters",
        len(targets),
        type(network_of(engine)).__name__,
        count,
    )


def adapter_only(engine: nn.Module, checkpoint: dict) -> None:
    """Keep only the adapter tensors in a Lightning checkpoint's ``state_dict``."""
    state = checkpoint.get("state_dict") or {}
    checkpoint["state_dict"] = {k: v for k, v in state.items() if _is_adapter_key(k)}


def check_adapter_checkpoint(engine: nn.Module, checkpoint: dict) -> None:
    """Refuse to resume from a checkpoint that is not this engine's adapter."""
    state = checkpoint.get("state_dict") or {}
    expected = {k for k in engine.state_dict() if _is_adapter_key(k)}
    unexpected = sorted(k for k in state if k not in expected)
    if unexpected:
        raise CheckpointError(
            f"resume checkpoint key {unexpected[0]!r} is not an adapter "
            "weight of this lora_config (was it written without LoRA, or "
            "with other target_modules?)"
        )
    missing = sorted(expected - set(state))
    if missing:
        raise CheckpointError(
            f"resume checkpoint lacks adapter weight {missing[0]!r} ({len(missing)} missing)"
        )


class LoraExport(pl.Callback):
    """Write the adapter as ``<dirpath>/step-XXXXXXX.lora.safetensors`` every
    ``every_n_train_steps`` steps and at the end of training (``dirpath`` defaults to
    ``<run logdir>/lora``). Existing files are kept, never replaced. ``format``:
    ``"diffusers"`` (diffusers' ``load_lora_weights``) or ``"kohya"`` (A1111 / ComfyUI;
    ``step-XXXXXXX.kohya.safetensors``, text-encoder adapters included)."""

    def __init__(
        self,
        every_n_train_steps: int = 1000,
        dirpath: str | None = None,
        format: str = "diffusers",
    ):
        if int(every_n_train_steps) <= 0:
            raise ConfigError("LoraExport.every_n_train_steps must be positive")
        if format not in FORMATS:
            raise ConfigError(f"LoraExport.format must be one of {list(FORMATS)}, got {format!r}")
        self.every = int(every_n_train_steps)
        self.dirpath = dirpath
        self.format = format
        self.written: list[Path] = []

    def _folder(self, trainer: Any) -> Path:
        if self.dirpath is not None:
            return Path(self.dirpath)
        root = getattr(trainer, "logdir", None) or trainer.default_root_dir
        return Path(root, "lora")

    def _write(self, trainer: Any, module: Any) -> None:
        if not trainer.is_global_zero:
            return
        kind = "lora" if self.format == "diffusers" else self.format
        path = self._folder(trainer) / f"step-{trainer.global_step:07d}.{kind}.safetensors"
        if path.exists():
            return
        self.written.append(save_lora(module, path, format=self.format))
        logger.info("LoRA adapter written to %s", self.written[-1])

    def on_train_batch_end(self, trainer: Any, module: Any, *args: Any) -> None:
        if trainer.global_step > 0 and trainer.global_step % self.every == 0:
            self._write(trainer, module)

    def on_train_end(self, trainer: Any, module: Any) -> None:
        self._write(trainer, module)
