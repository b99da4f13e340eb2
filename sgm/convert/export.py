"""sgm checkpoint + config -> diffusers folder."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from ..errors import CheckpointError, InputError
from ._components import Layout, layout
from ._engine import build_engine, engine_params, load_config, shapes
from ._folders import check_new_output, new_folder, save_component
from ._pipeline import write_extras
from ._probe import trace

# Tensors the diffusers layout has no place for (none is read by sampling), kept beside
# the components so that converting back gives the original file exactly.
EXTRA_WEIGHTS = "sgm_extra_weights.safetensors"

logger = logging.getLogger(__name__)


def _check_aliases(state: dict[str, torch.Tensor], aliases: dict[str, str]) -> None:
    for copy, source in aliases.items():
        differs = [
            k
            for k in state
            if k.startswith(copy) and not torch.equal(state[k], state[source + k[len(copy) :]])
        ]
        if differs:
            logger.warning(
                "%s* differs from %s*; the diffusers folder keeps only %s* (the "
                "weights sampling runs)",
                copy,
                source,
                source,
            )


def unplaced_keys(plan: Layout, engine_shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """Engine keys no component holds (and that are neither copies nor constants)."""
    read = set()
    for component in plan.components:
        read |= {entry.source for entry in trace(component.convert, engine_shapes).values()}
    derived = (*plan.aliases, "denoiser.")
    return [
        k
        for k in engine_shapes
        if k not in read and not k.startswith(derived) and not k.endswith("position_ids")
    ]


def to_diffusers(
    checkpoint: str | os.PathLike, config: str | os.PathLike, output: str | os.PathLike
) -> Path:
    """Write the model of ``checkpoint`` (built by ``config``) as a new diffusers folder.

    Components: UNet (or video UNet), VAE (or temporal-decoder VAE), text encoders with
    tokenizers or image encoder with its image processor, an ``EulerDiscreteScheduler``
    with the config's sigmas, and ``model_index.json``. ``output`` must not exist; it
    appears complete or not at all.
    """
    from ..checkpoint import (
        check_weights_file,
        compare_state_dict,
        load_state_dict,
        remap_legacy_keys,
    )

    checkpoint, output = Path(checkpoint), Path(output)
    check_new_output(output, "output folder")
    if not checkpoint.is_file():
        raise InputError(f"checkpoint not found: {checkpoint}")
    check_weights_file(checkpoint)  # whole, and no pickle that runs code: before any build
    cfg = load_config(config)
    engine = build_engine(cfg)
    params = engine_params(cfg)
    plan = layout(engine, params)
    state = remap_legacy_keys(load_state_dict(checkpoint), engine.state_dict().keys())
    report = compare_state_dict(engine, state)
    if not report.ok:
        raise CheckpointError(
            f"{checkpoint} does not match {config}: " + "; ".join(report.summary().splitlines()[:3])
        )
    _check_aliases(state, plan.aliases)
    with new_folder(output) as folder:
        for component in plan.components:
            logger.info("writing %s (%s)", component.name, component.class_name)
            save_component(component, component.convert(state), folder / component.name)
        write_extras(folder, plan, params)
        extra = unplaced_keys(plan, shapes(engine.state_dict()))
        if extra:
            from safetensors.torch import save_file

            save_file({k: state[k].contiguous() for k in extra}, folder / EXTRA_WEIGHTS)
    return output
