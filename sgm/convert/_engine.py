"""The sgm side of a conversion: configs, engines on the meta device, weights files."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import instantiate_from_config, load_configs, to_plain
from ..errors import ConfigError

# Engine parts that hold no weights of the released files.
_NOT_WEIGHTS = ("sampler_config", "loss_fn_config", "ckpt_path", "scheduler_config")


def load_config(path: str | os.PathLike) -> Any:
    """The YAML at ``path`` (an OmegaConf node with a ``model`` section)."""
    config = load_configs([path])
    if "model" not in config or "target" not in config.model:
        raise ConfigError(f"{path}: no model.target; expected an sgm model config")
    return config


def engine_params(config: Any) -> dict[str, Any]:
    """``model.params`` as plain containers, with every config resolved."""
    return to_plain(config.model.get("params")) or {}


def build_engine(config: Any, device: str | torch.device = "meta") -> nn.Module:
    """The config's model without checkpoint, sampler or loss (their weights are not in
    released files), built on ``device``."""
    params = config.model.get("params") or {}
    params = {k: v for k, v in params.items() if k not in _NOT_WEIGHTS}
    model = {"target": config.model.target, "params": {**params, "use_ema": False}}
    try:
        with torch.device(device):
            return instantiate_from_config(model)
    except ConfigError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise ConfigError(f"cannot build the model of the config: {error}") from None


def denoiser_buffers(config: Any) -> dict[str, torch.Tensor]:
    """``denoiser.*`` buffers (the sigma table of discrete denoisers), from the config."""
    denoiser = instantiate_from_config(config.model.params.denoiser_config)
    return {f"denoiser.{k}": v for k, v in denoiser.state_dict().items()}


def shapes(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def write_safetensors(state: Mapping[str, torch.Tensor], path: Path) -> Path:
    """Write ``state`` to a new ``.safetensors`` file atomically; never overwrites."""
    from safetensors.torch import save_file

    from ..errors import InputError
    from ..output_files import write_new_file

    tensors = {k: v.detach().contiguous() for k, v in state.items()}
    try:
        return write_new_file(
            lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}), [path]
        )
    except FileExistsError:
        raise InputError(f"{path} exists; nothing was written") from None
