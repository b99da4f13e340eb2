"""sgm checkpoint + config -> diffusers folder."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from ..errors import CheckpointError, InputError
from ._components import layout
from ._engine import build_engine, engine_params, load_config
from ._folders import check_new_output, new_folder, save_component
from ._pipeline import write_extras

logger = logging.getLogger(__name__)


def _check_aliases(state: dict[str, torch.Tensor], aliases: dict[str, str]) -> None:
    for copy, source in aliases.items():
        differs = [k for k in state if k.startswith(copy)
                   and not torch.equal(state[k], state[source + k[len(copy):]])]
        if differs:
            logger.warning("%s* differs from %s*; the diffusers folder keeps only %s* (the "
                           "weights sampling runs)", copy, source, source)


def to_diffusers(
    checkpoint: str | os.PathLike, config: str | os.PathLike, output: str | os.PathLike
) -> Path:
    """Write the model of ``checkpoint`` (built by ``config``) as a new diffusers folder.

    Components: UNet (or video UNet), VAE (or temporal-decoder VAE), text encoders with
    tokenizers or image encoder with its image processor, an ``EulerDiscreteScheduler``
    with the config's sigmas, and ``model_index.json``. ``output`` must not exist; it
    appears complete or not at all.
    """
    from ..checkpoint import compare_state_dict, load_state_dict, remap_legacy_keys

    checkpoint, output = Path(checkpoint), Path(output)
    check_new_output(output, "output folder")
    if not checkpoint.is_file():
        raise InputError(f"checkpoint not found: {checkpoint}")
    cfg = load_config(config)
    engine = build_engine(cfg)
    params = engine_params(cfg)
    plan = layout(engine, params)
    state = remap_legacy_keys(load_state_dict(checkpoint), engine.state_dict().keys())
    report = compare_state_dict(engine, state)
    if not report.ok:
        raise CheckpointError(f"{checkpoint} does not match {config}: "
                              + "; ".join(report.summary().splitlines()[:3]))
    _check_aliases(state, plan.aliases)
    with new_folder(output) as folder:
        for component in plan.components:
            logger.info("writing %s (%s)", component.name, component.class_name)
            save_component(component, component.convert(state), folder / component.name)
        write_extras(folder, plan, params)
    return output
