"""diffusers folder -> one sgm ``.safetensors`` in the released single-file layout."""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import check_weights_folder
from ..errors import CheckpointError, InputError
from ..inference.releases import config_path
from ._components import PIPELINES, Component, layout
from ._engine import (
    build_engine,
    denoiser_buffers,
    engine_params,
    load_config,
    shapes,
    write_safetensors,
)
from ._folders import check_component, check_new_output, load_component, read_json
from ._probe import KeyTable, check_bijection, invert, trace

logger = logging.getLogger(__name__)

_XL = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline")


def released_config(folder: str | os.PathLike) -> Path:
    """The released config that fits a diffusers folder, from its ``model_index.json``
    and component configs (SD 2.1 / 2.1-768, SDXL base / refiner, SVD / SVD-XT)."""
    folder = Path(folder)
    index = read_json(folder / "model_index.json")
    pipeline = index.get("_class_name")
    if pipeline == "StableDiffusionPipeline":
        text = read_json(folder / "text_encoder" / "config.json")
        if text.get("hidden_size") != 1024:
            raise InputError(
                f"{folder / 'text_encoder'}: {text.get('architectures')} with "
                f"hidden_size {text.get('hidden_size')} is not SD 2.x (1024); "
                "SD 1.x is not supported"
            )
        scheduler = read_json(folder / "scheduler" / "scheduler_config.json")
        v = scheduler.get("prediction_type") == "v_prediction"
        name = "sd2.1_768" if v else "sd2.1"
    elif pipeline in _XL:
        refiner = (index.get("text_encoder") or [None])[0] is None
        name = "sdxl_refiner_1.0" if refiner else "sdxl_base_1.0"
    elif pipeline == "StableVideoDiffusionPipeline":
        frames = read_json(folder / "unet" / "config.json").get("num_frames", 14)
        name = "svd_xt" if frames == 25 else "svd"
    else:
        raise InputError(
            f"{folder / 'model_index.json'}: pipeline {pipeline} is not supported "
            f"(supported: {', '.join(sorted(set(PIPELINES.values())))})"
        )
    return config_path(name)


def _component_table(component: Component, engine_shapes: dict[str, tuple]) -> KeyTable:
    table = trace(component.convert, engine_shapes)
    # transformers' CLIP text models keep position_ids as a constant buffer, not a weight.
    return {k: v for k, v in table.items() if not k.endswith("position_ids")}


def _import_component(
    folder: Path, component: Component, engine_shapes: dict[str, tuple]
) -> dict[str, torch.Tensor]:
    table = _component_table(component, engine_shapes)
    weights = load_component(folder, component)
    where = folder / component.name
    missing, unexpected = sorted(set(table) - set(weights)), sorted(set(weights) - set(table))
    if missing or unexpected:
        raise CheckpointError(
            f"{where}: does not match the config (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}); is --config the right one?"
        )
    for key, entry in table.items():
        if tuple(weights[key].shape) != entry.shape:
            raise CheckpointError(
                f"{where}: {key} has shape {tuple(weights[key].shape)}, the "
                f"config expects {entry.shape}; is --config the right one?"
            )
    sources = {e.source for e in table.values()}
    check_bijection(table, engine_shapes, set(engine_shapes) - sources)
    return invert(table, weights, engine_shapes)


def _fill(key: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    if key.endswith("position_ids"):
        return torch.arange(shape[-1]).expand(shape).clone()
    return torch.zeros(shape, dtype=dtype)


def _extra_weights(folder: Path, wanted: dict[str, tuple]) -> dict[str, torch.Tensor]:
    """Tensors a previous export kept beside the components (see ``EXTRA_WEIGHTS``)."""
    from ..checkpoint import load_state_dict
    from .export import EXTRA_WEIGHTS

    path = folder / EXTRA_WEIGHTS
    if not path.is_file():
        return {}
    extra = load_state_dict(path)
    return {k: v for k, v in extra.items() if k in wanted and tuple(v.shape) == wanted[k]}


def _prefixes(keys: list[str]) -> str:
    groups = Counter(".".join(k.split(".")[:4]) for k in keys)
    return ", ".join(f"{p}* ({n})" for p, n in sorted(groups.items()))


def import_state(folder: Path, cfg: Any) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The engine state dict from a diffusers folder, and the keys that folder has no
    tensors for (constants, or parts sampling never reads; written as zeros)."""
    engine = build_engine(cfg)
    params = engine_params(cfg)
    plan = layout(engine, params)
    index = read_json(folder / "model_index.json")
    found, expected = index.get("_class_name"), plan.pipeline
    if found != expected and not (found in _XL and expected in _XL):
        raise InputError(
            f"{folder / 'model_index.json'}: pipeline {found} does not match the "
            f"config ({plan.family}: {expected})"
        )
    for component in plan.components:
        check_component(folder, component)
    engine_shapes = shapes(engine.state_dict())
    state: dict[str, torch.Tensor] = {}
    for component in plan.components:
        state.update(_import_component(folder, component, engine_shapes))
    for copy, source in plan.aliases.items():
        for key in engine_shapes:
            if key.startswith(copy):
                state[key] = state[source + key[len(copy) :]].clone()
    dtype = Counter(v.dtype for v in state.values()).most_common(1)[0][0]
    if any(k.startswith("denoiser.") for k in engine_shapes):
        buffers = denoiser_buffers(cfg)
        state.update({k: v.to(dtype) if v.is_floating_point() else v for k, v in buffers.items()})
    unplaced = [k for k in engine_shapes if k not in state]
    state.update(_extra_weights(folder, {k: engine_shapes[k] for k in unplaced}))
    unplaced = [k for k in unplaced if k not in state]
    for key in unplaced:
        state[key] = _fill(key, engine_shapes[key], dtype)
    wrong = [k for k in engine_shapes if tuple(state[k].shape) != engine_shapes[k]]
    if wrong or set(state) != set(engine_shapes):
        raise CheckpointError(f"converted state does not match the engine: {wrong[:3]}")
    return state, unplaced


def to_sgm(
    folder: str | os.PathLike, output: str | os.PathLike, config: str | os.PathLike | None = None
) -> Path:
    """Convert a diffusers folder to a new ``.safetensors`` that ``config`` (by default
    the released config of the folder's family) loads strictly."""
    folder, output = Path(folder), Path(output)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder (expected a diffusers model folder)")
    if output.suffix != ".safetensors":
        raise InputError(f"{output}: the output must be a .safetensors file")
    check_new_output(output, "output file")
    read_json(folder / "model_index.json")
    # Every weights file is whole and safe to read (a damaged one is named itself, not
    # through the library that would load its folder), before anything is built.
    check_weights_folder(folder)
    cfg = load_config(config if config is not None else released_config(folder))
    state, unplaced = import_state(folder, cfg)
    if unplaced:
        logger.info(
            "not in the diffusers layout, written as constants or zeros (never read "
            "by sampling): %s",
            _prefixes(unplaced),
        )
    return write_safetensors(state, output)
