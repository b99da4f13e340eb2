"""The parts of a diffusers folder that hold no weights: scheduler, tokenizers,
image processor and ``model_index.json``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ._components import Layout

_PREDICTION = {
    "EpsScaling": "epsilon",
    "VScaling": "v_prediction",
    "VScalingWithEDMcNoise": "v_prediction",
}


def _short(config: Mapping[str, Any] | None) -> str:
    return str((config or {}).get("target", "")).rsplit(".", 1)[-1]


def scheduler_config(params: Mapping[str, Any], family: str) -> dict[str, Any]:
    """``EulerDiscreteScheduler`` config with the sigmas of the config's discretization.

    Discrete (SD/SDXL): the DDPM scaled-linear betas and the prediction type of the
    denoiser scaling; "trailing" timesteps, the spacing sgm's sampler uses. Continuous
    (SVD): Karras (EDM) sigmas between the discretization's ``sigma_min``/``sigma_max``.
    """
    denoiser = params["denoiser_config"]
    scaling = _short(denoiser["params"].get("scaling_config"))
    if scaling not in _PREDICTION:
        raise ConfigError(
            f"denoiser scaling {scaling or '?'} has no diffusers prediction type "
            f"(supported: {', '.join(_PREDICTION)})"
        )
    config: dict[str, Any] = {
        "_class_name": "EulerDiscreteScheduler",
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "prediction_type": _PREDICTION[scaling],
        "interpolation_type": "linear",
        "use_karras_sigmas": False,
        "timestep_spacing": "trailing",
        "steps_offset": 1,
    }
    if family != "svd":
        disc = denoiser["params"].get("discretization_config", {})
        if _short(disc) != "LegacyDDPMDiscretization":
            raise ConfigError(
                f"discretization {_short(disc) or '?'} is not supported for "
                "discrete denoisers (LegacyDDPMDiscretization)"
            )
        p = disc.get("params", {})
        config.update(
            beta_start=p.get("linear_start", 0.00085),
            beta_end=p.get("linear_end", 0.012),
            num_train_timesteps=p.get("num_timesteps", 1000),
        )
        return config
    sampler = params.get("sampler_config", {}).get("params", {})
    disc = sampler.get("discretization_config", {"target": "EDMDiscretization"})
    if _short(disc) != "EDMDiscretization":
        raise ConfigError(
            f"discretization {_short(disc)} is not supported for SVD (EDMDiscretization)"
        )
    p = disc.get("params", {})
    if p.get("rho", 7.0) != 7.0:
        raise ConfigError(f"EDMDiscretization rho={p['rho']}; diffusers' Karras sigmas use 7")
    config.update(
        use_karras_sigmas=True,
        timestep_type="continuous",
        timestep_spacing="leading",
        sigma_min=p.get("sigma_min", 0.002),
        sigma_max=p.get("sigma_max", 80.0),
    )
    return config


def model_index(layout: Layout) -> dict[str, Any]:
    """``model_index.json`` of the pipeline."""
    import diffusers

    index: dict[str, Any] = {
        "_class_name": layout.pipeline,
        "_diffusers_version": diffusers.__version__,
    }
    for component in layout.components:
        index[component.name] = [component.library, component.class_name]
        if component.name.startswith("text_encoder"):
            index[component.name.replace("text_encoder", "tokenizer")] = [
                "transformers",
                "CLIPTokenizer",
            ]
    index["scheduler"] = ["diffusers", "EulerDiscreteScheduler"]
    if layout.family == "sd2":
        index.update(
            safety_checker=[None, None],
            feature_extractor=[None, None],
            image_encoder=[None, None],
            requires_safety_checker=False,
        )
    elif layout.family == "sdxl_refiner":
        index.update(
            text_encoder=[None, None],
            tokenizer=[None, None],
            requires_aesthetics_score=True,
            force_zeros_for_empty_prompt=False,
        )
    elif layout.family == "sdxl_base":
        index.update(force_zeros_for_empty_prompt=True)
    elif layout.family == "svd":
        index["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
    return index


def write_extras(folder: Path, layout: Layout, params: Mapping[str, Any]) -> None:
    """Scheduler, tokenizers, image processor and ``model_index.json`` into ``folder``."""
    from ..modules.encoders._tokenizers import build_hf_clip_tokenizer

    (folder / "scheduler").mkdir()
    scheduler = {**scheduler_config(params, layout.family)}
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2))
    for component in layout.components:
        if component.name.startswith("text_encoder"):
            tokenizer = build_hf_clip_tokenizer(component.config["max_position_embeddings"])
            if component.pad_token is not None:
                tokenizer.pad_token = component.pad_token
            tokenizer.save_pretrained(folder / component.name.replace("text_encoder", "tokenizer"))
    if layout.family == "svd":
        _feature_extractor(folder / "feature_extractor")
    (folder / "model_index.json").write_text(json.dumps(model_index(layout), indent=2))


def _feature_extractor(folder: Path) -> None:
    from transformers import CLIPImageProcessor

    from ..modules.encoders._openclip import CLIP_MEAN, CLIP_STD

    processor = CLIPImageProcessor(
        size={"shortest_edge": 224},
        crop_size={"height": 224, "width": 224},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
        resample=3,
    )
    processor.save_pretrained(folder)
