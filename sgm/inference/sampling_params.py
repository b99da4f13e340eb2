"""Sampling settings of the image pipeline: the sampler, schedule, guider and thresholder
choices, ``SamplingParams``, and the sampler object they describe."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from ..errors import InputError
from ..modules.diffusionmodules.deepcache import DeepCache
from ..modules.diffusionmodules.tgate import TGate
from ..modules.token_merging import TokenMerging
from .params_check import check_sampling_params
from .samplers import make_sampler

_DIFF = "sgm.modules.diffusionmodules"


class Sampler(str, Enum):
    """Sampler classes of ``sgm.modules.diffusionmodules.sampling``."""

    EULER_EDM = "EulerEDMSampler"
    HEUN_EDM = "HeunEDMSampler"
    EULER_ANCESTRAL = "EulerAncestralSampler"
    DPMPP2S_ANCESTRAL = "DPMPP2SAncestralSampler"
    DPMPP2M = "DPMPP2MSampler"
    LINEAR_MULTISTEP = "LinearMultistepSampler"
    LCM = "LCMSampler"


class Discretization(str, Enum):
    """Noise schedules of ``sgm.modules.diffusionmodules.discretizer``."""

    LEGACY_DDPM = "LegacyDDPMDiscretization"
    EDM = "EDMDiscretization"
    LCM = "LCMDiscretization"


class TimestepSpacing(str, Enum):
    """Which DDPM timesteps a legacy schedule of N steps visits: the original's, or
    ``trailing`` (from the last timestep down, as few-step models such as SDXL-Lightning
    were trained to use)."""

    ORIGINAL = "original"
    TRAILING = "trailing"


class Guider(str, Enum):
    """Guiders of ``sgm.modules.diffusionmodules.guiders``."""

    VANILLA = "VanillaCFG"
    IDENTITY = "IdentityGuider"


class Thresholder(str, Enum):
    """Dynamic thresholding of the guided output (only none)."""

    NONE = "None"


@dataclass
class SamplingParams:
    """Sampling settings; the unused ones are ignored by the chosen sampler."""

    width: int = 1024
    height: int = 1024
    steps: int = 50
    sampler: Sampler = Sampler.DPMPP2M
    discretization: Discretization = Discretization.LEGACY_DDPM
    guider: Guider = Guider.VANILLA
    thresholder: Thresholder = Thresholder.NONE
    scale: float = 6.0
    aesthetic_score: float = 5.0
    negative_aesthetic_score: float = 5.0
    img2img_strength: float = 1.0
    orig_width: int = 1024
    orig_height: int = 1024
    crop_coords_top: int = 0
    crop_coords_left: int = 0
    sigma_min: float = 0.0292
    sigma_max: float = 14.6146
    rho: float = 3.0
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = 999.0
    s_noise: float = 1.0
    eta: float = 1.0
    order: int = 4
    deepcache: int = 0
    deepcache_branch: int = 0
    tome: float = 0.0
    tome_max_downsample: int = 1
    tgate: int = 0
    timestep_spacing: TimestepSpacing = TimestepSpacing.ORIGINAL

    def __post_init__(self) -> None:
        check_sampling_params(self)


def get_guider_config(params: SamplingParams) -> dict[str, Any]:
    """Guider config for ``params.guider`` (classifier-free guidance at ``params.scale``)."""
    guider = Guider(params.guider)
    if Thresholder(params.thresholder) is not Thresholder.NONE:
        raise InputError(f"unsupported thresholder {params.thresholder!r}")
    if guider is Guider.IDENTITY:
        return {"target": f"{_DIFF}.guiders.IdentityGuider"}
    return {"target": f"{_DIFF}.guiders.VanillaCFG", "params": {"scale": params.scale}}


def get_discretization_config(params: SamplingParams) -> dict[str, Any]:
    """Discretization config for ``params.discretization``."""
    discretization = Discretization(params.discretization)
    spacing = TimestepSpacing(params.timestep_spacing)
    if discretization is Discretization.LCM:
        return {"target": f"{_DIFF}.distilled.{discretization.value}"}
    target = f"{_DIFF}.discretizer.{discretization.value}"
    if discretization is Discretization.LEGACY_DDPM:
        if spacing is TimestepSpacing.ORIGINAL:
            return {"target": target}
        return {"target": target, "params": {"timestep_spacing": spacing.value}}
    if spacing is not TimestepSpacing.ORIGINAL:
        raise InputError(
            f"timestep_spacing {spacing.value!r} applies to LegacyDDPMDiscretization only, "
            f"not {discretization.value}"
        )
    sigmas = {"sigma_min": params.sigma_min, "sigma_max": params.sigma_max, "rho": params.rho}
    return {"target": target, "params": sigmas}


def deepcache_of(params: SamplingParams) -> DeepCache | None:
    """DeepCache settings of ``params`` (``deepcache``: one full step in that many; 0
    or 1: off), None when off."""
    if params.deepcache <= 1:
        return None
    return DeepCache(int(params.deepcache), int(params.deepcache_branch))


def tome_of(params: SamplingParams) -> TokenMerging | None:
    """Token merging settings of ``params`` (``tome``: the share of tokens merged; 0:
    off), None when off."""
    if params.tome == 0:
        return None
    return TokenMerging(float(params.tome), int(params.tome_max_downsample))


def tgate_of(params: SamplingParams) -> TGate | None:
    """T-GATE settings of ``params`` (``tgate``: the gate step; 0: off), None when off."""
    return TGate(int(params.tgate)) if params.tgate else None


def sampler_config(params: SamplingParams) -> dict[str, Any]:
    """The sampler config ``params`` describe (discretization and guider included)."""
    sampler = Sampler(params.sampler)
    common = {
        "num_steps": params.steps,
        "discretization_config": get_discretization_config(params),
        "guider_config": get_guider_config(params),
        "verbose": True,
    }
    if sampler in (Sampler.EULER_EDM, Sampler.HEUN_EDM):
        extra = {
            "s_churn": params.s_churn,
            "s_tmin": params.s_tmin,
            "s_tmax": params.s_tmax,
            "s_noise": params.s_noise,
        }
    elif sampler in (Sampler.EULER_ANCESTRAL, Sampler.DPMPP2S_ANCESTRAL):
        extra = {"eta": params.eta, "s_noise": params.s_noise}
    elif sampler is Sampler.LINEAR_MULTISTEP:
        extra = {"order": params.order}
    else:
        extra = {}
    return {"target": f"{_DIFF}.sampling.{sampler.value}", "params": {**common, **extra}}


def get_sampler_config(params: SamplingParams) -> Any:
    """The sampler object for ``params`` (:func:`sampler_config`, made by
    ``sgm.inference.samplers.make_sampler``)."""
    return make_sampler(sampler_config(params))
