"""Sampling engines: building and loading one for inference, and where and in which
precision it runs.

:func:`load_engine` is the one loader behind ``SamplingPipeline`` and
``load_video_model``: config, checkpoint, LoRA adapters, frozen weights, half-precision
weights, low-VRAM offloading and the compute dtype the samplers autocast to.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .. import offload, precision
from ..checkpoint import load_checkpoint_into
from ..config import instantiate_from_config
from ..errors import CheckpointError
from ..lora import apply_lora_specs
from ..models.engine_run import engine_device
from ..modules.diffusionmodules.wrappers import compile_network
from .checkpoint_fit import check_fits

logger = logging.getLogger(__name__)


def check_checkpoint(ckpt: str | os.PathLike, hint: str = "") -> None:
    """``CheckpointError`` naming ``ckpt`` (then ``hint``) unless it is a file."""
    if not Path(ckpt).is_file():
        raise CheckpointError(f"checkpoint not found: {ckpt}{hint}")


def load_engine(
    config: Any,
    ckpt: str | os.PathLike | None,
    device: str | torch.device,
    *,
    dtype: str | torch.dtype | None = "auto",
    half_weights: bool = False,
    half_conditioner: bool = False,
    offload_weights: bool = False,
    lora: Sequence[tuple[str | os.PathLike, float]] = (),
    compile_model: bool = False,
    build_on: str | torch.device | None = None,
    verbose: bool = False,
    missing_hint: str = "",
) -> torch.nn.Module:
    """Build the engine of ``config`` (with or without its top-level ``model`` key), load
    ``ckpt`` strictly and get it ready to sample on ``device``.

    ``dtype`` (``sgm.precision.parse_dtype``) becomes the engine's ``compute_dtype``;
    with a half ``dtype``, ``half_weights`` keeps the network and ``half_conditioner``
    the conditioner in it. ``lora``: ``(path, scale)`` adapters applied after the
    base weights. ``offload_weights`` keeps the parts on the host, each moved to
    ``device`` while it runs (``sgm.offload``). ``compile_model`` compiles the network
    and the decoder once the weights are final (:func:`compile_engine`; weights frozen
    into the graphs unless offloaded). ``build_on`` is the device the weights are
    created on (default: torch's default device). A missing checkpoint is a
    ``CheckpointError`` (``missing_hint`` appended) before anything is built.
    """
    if ckpt is not None:
        check_checkpoint(ckpt, missing_hint)
    compute_dtype = precision.parse_dtype(dtype, device)
    model_config = config["model"] if "model" in config else config
    if ckpt is not None:  # its keys and shapes against the config's, before the real build
        check_fits(model_config, ckpt)
    with torch.device(build_on) if build_on is not None else contextlib.nullcontext():
        model = instantiate_from_config(model_config, key="model")
    if ckpt is not None:
        if hasattr(model, "init_from_ckpt"):
            report = model.init_from_ckpt(ckpt, strict=True)
        else:
            report = load_checkpoint_into(model, ckpt, strict=True)
        if verbose:
            logger.info("loaded %s: %s", ckpt, report.summary() or "all keys matched")
    if lora:
        apply_lora_specs(model, list(lora))
    model.requires_grad_(False)
    model.eval()
    if compute_dtype in precision.HALF_DTYPES:
        if half_conditioner:
            model.conditioner.to(dtype=compute_dtype)
        if half_weights:
            precision.cast_network(model, compute_dtype)
    if offload_weights:
        offload.offload_engine(model, device)
    else:
        model.to(device)
    model.compute_dtype = compute_dtype
    if compile_model:
        compile_engine(model, freeze=not offload_weights)
    return model


def compile_engine(model: torch.nn.Module, freeze: bool = True) -> torch.nn.Module:
    """``torch.compile`` the engine's network and its first stage's decoder in place
    (``compile_network``; ``freeze`` folds the weights into the graphs, for weights
    that are final and stay on one device). Compilation happens at each one's first call.
    """
    compile_network(model.model.diffusion_model, freeze=freeze)
    decoder = getattr(getattr(model, "first_stage_model", None), "decoder", None)
    if isinstance(decoder, torch.nn.Module):
        compile_network(decoder, freeze=freeze)
    return model


def model_device(model: torch.nn.Module) -> torch.device:
    """The device a model runs on: its offloader's (``sgm.offload``) if it has one, else
    that of its first parameter or buffer (cpu if it has none)."""
    return engine_device(model)


def engine_autocast(
    model: Any, device: torch.device, dtype: str | torch.dtype | None = None
) -> contextlib.AbstractContextManager:
    """Autocast on ``device`` in ``dtype``, else the model's ``compute_dtype``, else the
    device's default (``sgm.precision.autocast``: fp16 on CUDA, none elsewhere)."""
    if dtype is None:
        dtype = getattr(model, "compute_dtype", None)
    return precision.autocast(device, dtype)
