"""Checks of ``SamplingParams`` values: each bad one is an ``InputError`` naming the field.

``check_sampling_params(params)`` runs when the dataclass is built; the pipeline calls it
again with the model's own size multiple (latent factor times the UNet's downsampling)
before sampling, since fields can be changed after construction.
"""

from __future__ import annotations

import functools
import math
from dataclasses import fields
from enum import Enum
from typing import Any, get_type_hints

from ..errors import InputError

LATENT_FACTOR = 8  # every released image autoencoder downsamples by 8
TOME_DOWNSAMPLES = (1, 2, 4, 8)  # the UNet's downsampling levels token merging can stop at

# field: (kind, low, high, low inclusive); high None: no upper bound.
_RANGES: dict[str, tuple[type, float, float | None, bool]] = {
    "width": (int, 1, None, True),
    "height": (int, 1, None, True),
    "steps": (int, 1, None, True),
    "scale": (float, 0.0, None, True),
    "aesthetic_score": (float, -math.inf, None, True),
    "negative_aesthetic_score": (float, -math.inf, None, True),
    "img2img_strength": (float, 0.0, 1.0, False),
    "orig_width": (int, 1, None, True),
    "orig_height": (int, 1, None, True),
    "crop_coords_top": (int, 0, None, True),
    "crop_coords_left": (int, 0, None, True),
    "sigma_min": (float, 0.0, None, False),
    "sigma_max": (float, 0.0, None, False),
    "rho": (float, 0.0, None, False),
    "s_churn": (float, 0.0, None, True),
    "s_tmin": (float, 0.0, None, True),
    "s_tmax": (float, 0.0, None, True),
    "s_noise": (float, 0.0, None, True),
    "eta": (float, 0.0, None, True),
    "order": (int, 1, None, True),
    "deepcache": (int, 0, None, True),
    "deepcache_branch": (int, 0, None, True),
    "tome": (float, 0.0, None, True),
    "tome_max_downsample": (int, 1, 8, True),
    "tgate": (int, 0, None, True),
}


def _number(name: str, value: Any, kind: type) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        ok = ok and float(value).is_integer()
    if not ok or not math.isfinite(float(value)):
        what = "an integer" if kind is int else "a finite number"
        raise InputError(f"SamplingParams.{name}={value!r}: expected {what}")
    return float(value)


def check_sampling_params(params: Any, multiple: int = LATENT_FACTOR) -> None:
    """Raise ``InputError`` naming the first field of ``params`` that is out of range.

    Enum fields given as their string values are converted in place; ``width`` and
    ``height`` must be multiples of ``multiple``.
    """
    hints = _field_types(type(params))
    for field in fields(params):
        value = getattr(params, field.name)
        if field.name in _RANGES:
            kind, low, high, inclusive = _RANGES[field.name]
            number = _number(field.name, value, kind)
            too_low = number < low if inclusive else number <= low
            if too_low or (high is not None and number > high):
                bound = f">= {low:g}" if inclusive else f"> {low:g}"
                if high is not None:
                    bound = f"in ({low:g}, {high:g}]"
                raise InputError(f"SamplingParams.{field.name}={value!r}: must be {bound}")
        enum = _enum_type(hints.get(field.name))
        if enum is not None and not isinstance(value, enum):
            try:
                setattr(params, field.name, enum(value))
            except ValueError:
                choices = ", ".join(member.value for member in enum)
                raise InputError(
                    f"SamplingParams.{field.name}={value!r}: expected one of {choices}"
                ) from None
    for name in ("width", "height"):
        value = int(getattr(params, name))
        if value % multiple:
            raise InputError(
                f"SamplingParams.{name}={value}: must be a multiple of {multiple} "
                f"(e.g. {max(multiple, round(value / multiple) * multiple)})"
            )
    if not params.tome < 1:
        raise InputError(f"SamplingParams.tome={params.tome!r}: must be in [0, 1)")
    if params.tome_max_downsample not in TOME_DOWNSAMPLES:
        choices = ", ".join(map(str, TOME_DOWNSAMPLES))
        raise InputError(
            f"SamplingParams.tome_max_downsample={params.tome_max_downsample!r}: "
            f"expected one of {choices}"
        )
    if params.sigma_max <= params.sigma_min:
        raise InputError(
            f"SamplingParams.sigma_max={params.sigma_max!r} must be above "
            f"sigma_min={params.sigma_min!r}"
        )


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _enum_type(annotation: Any) -> type[Enum] | None:
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return annotation
    return None


def size_multiple(model: Any, factor: int) -> int:
    """The multiple image sides must be for ``model``: the latent ``factor`` times the
    UNet's total downsampling (2 per level after the first)."""
    network = getattr(getattr(model, "model", None), "diffusion_model", None)
    levels = len(getattr(network, "channel_mult", None) or [1])
    return int(factor) * 2 ** (levels - 1)


def check_image_size(image: Any, multiple: int) -> None:
    """``InputError`` unless the last two sides of ``image`` are multiples of ``multiple``."""
    height, width = (int(s) for s in image.shape[-2:])
    if height % multiple or width % multiple:
        raise InputError(
            f"image of {width}x{height}: width and height must be multiples of {multiple} "
            "(crop or resize it first)"
        )
