"""Classifier-free guidance: batch conditional and unconditional passes, then mix."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from einops import rearrange

from ...util import append_dims
from .. import run_cache

logpy = logging.getLogger(__name__)

GUIDED_KEYS = ("vector", "crossattn", "concat")

Cond = Mapping[str, Any]


def _as_key_list(keys: str | Sequence[str] | None) -> list[str]:
    if keys is None:
        return []
    if isinstance(keys, str):
        return [keys]
    return [str(k) for k in keys]


def _same_value(a: Any, b: Any) -> bool:
    if torch.is_tensor(a) or torch.is_tensor(b):
        return torch.is_tensor(a) and torch.is_tensor(b) and torch.equal(a, b)
    return bool(a == b)


def double_cond(c: Cond, uc: Cond, keys: Sequence[str], strict: bool) -> dict[str, Any]:
    """``[uc, c]`` concatenated along the batch for ``keys``; other entries from ``c``.

    With ``strict``, entries outside ``keys`` must be equal in ``c`` and ``uc``. Within
    a sampling run the batches are built once (``sgm.modules.run_cache``).
    """
    out: dict[str, Any] = {}
    for k in c:
        if k in keys:
            if k not in uc:
                raise KeyError(f"guidance needs unconditional {k!r}; uc has {list(uc)}")
            parts = (uc[k], c[k])
            out[k] = run_cache.reuse(("double_cond", k), parts, lambda p=parts: torch.cat(p, 0))
        else:
            if strict and k in uc and not _same_value(c[k], uc[k]):
                raise ValueError(
                    f"conditioning {k!r} differs between c and uc but is not one of "
                    f"the guided keys {list(keys)}"
                )
            out[k] = c[k]
    return out


def cfg_combine(x_u: torch.Tensor, x_c: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """Ho & Salimans (2022): ``x_u + scale (x_c - x_u)``."""
    return x_u + scale * (x_c - x_u)


def triangle_wave(values: torch.Tensor, period: float = 1.0) -> torch.Tensor:
    """``2 |v/p - round(v/p)|``: 0 at multiples of ``period``, 1 halfway between."""
    return 2 * (values / period - torch.floor(values / period + 0.5)).abs()


class Guider(ABC):
    """Prepares the batched denoiser inputs and combines the outputs."""

    @abstractmethod
    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Combine the denoiser output ``x`` computed on the prepared batch."""

    @abstractmethod
    def prepare_inputs(
        self, x: torch.Tensor, s: torch.Tensor, c: Cond, uc: Cond
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Denoiser inputs ``(x, sigma, cond)`` for state ``x`` at levels ``s``."""


class VanillaCFG(Guider):
    """Classifier-free guidance with a constant ``scale`` (1: conditional only)."""

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        x_u, x_c = x.chunk(2)
        return cfg_combine(x_u, x_c, self.scale)

    def prepare_inputs(
        self, x: torch.Tensor, s: torch.Tensor, c: Cond, uc: Cond
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        c_out = double_cond(c, uc, GUIDED_KEYS, strict=True)
        return torch.cat([x] * 2), torch.cat([s] * 2), c_out


class IdentityGuider(Guider):
    """No guidance: a single conditional pass."""

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x

    def prepare_inputs(
        self, x: torch.Tensor, s: torch.Tensor, c: Cond, uc: Cond
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        return x, s, dict(c)


class LinearPredictionGuider(Guider):
    """Per-frame guidance for video batches laid out ``(b t) ...``.

    Args:
        max_scale, min_scale: scale ramps linearly from ``min_scale`` (first frame) to
            ``max_scale`` (last frame).
        num_frames: frames per video ``t``.
        additional_cond_keys: further conditioning keys (e.g. ``cond_view``) doubled
            with ``vector``, ``crossattn`` and ``concat``.
    """

    def __init__(
        self,
        max_scale: float,
        num_frames: int,
        min_scale: float = 1.0,
        additional_cond_keys: str | Sequence[str] | None = None,
    ) -> None:
        self.min_scale = min_scale
        self.max_scale = max_scale
        self.num_frames = num_frames
        self.scale = torch.linspace(min_scale, max_scale, num_frames).unsqueeze(0)
        self.additional_cond_keys = _as_key_list(additional_cond_keys)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        x_u, x_c = x.chunk(2)
        if x_u.shape[0] % self.num_frames:
            raise ValueError(
                f"{type(self).__name__}: batch {x_u.shape[0]} is not a multiple of "
                f"num_frames={self.num_frames}"
            )
        x_u = rearrange(x_u, "(b t) ... -> b t ...", t=self.num_frames)
        x_c = rearrange(x_c, "(b t) ... -> b t ...", t=self.num_frames)
        # (1, t) -> (b, t, 1, ...)
        scale = append_dims(self._scale_on(x_u.device).expand(x_u.shape[0], -1), x_u.ndim)
        return rearrange(cfg_combine(x_u, x_c, scale), "b t ... -> (b t) ...")

    def _scale_on(self, device: torch.device) -> torch.Tensor:
        """``self.scale`` on ``device``, copied once per device rather than once per step."""
        cached = getattr(self, "_scale_cache", None)
        if cached is None or cached[0] is not self.scale or cached[1].device != device:
            cached = (self.scale, self.scale.to(device))
            self._scale_cache = cached
        return cached[1]

    def prepare_inputs(
        self, x: torch.Tensor, s: torch.Tensor, c: Cond, uc: Cond
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        keys = list(GUIDED_KEYS) + self.additional_cond_keys
        c_out = double_cond(c, uc, keys, strict=False)
        return torch.cat([x] * 2), torch.cat([s] * 2), c_out


class TrianglePredictionGuider(LinearPredictionGuider):
    """Per-frame scale following a triangle wave over the frames (orbits, SV3D).

    Args:
        period: wave period(s) in units of the whole clip; several are fused.
        period_fusing: ``"max"``, ``"mean"`` or ``"multiply"`` of the waves.
    """

    def __init__(
        self,
        max_scale: float,
        num_frames: int,
        min_scale: float = 1.0,
        period: float | Sequence[float] = 1.0,
        period_fusing: Literal["mean", "multiply", "max"] = "max",
        additional_cond_keys: str | Sequence[str] | None = None,
    ) -> None:
        super().__init__(max_scale, num_frames, min_scale, additional_cond_keys)
        periods = [float(period)] if isinstance(period, (int, float)) else list(period)
        values = torch.linspace(0, 1, num_frames)
        waves = torch.stack([self.triangle_wave(values, p) for p in periods])
        if period_fusing == "mean":
            wave = sum(waves.unbind(0)) / len(periods)
        elif period_fusing == "multiply":
            wave = torch.prod(waves, dim=0)
        elif period_fusing == "max":
            wave = torch.max(waves, dim=0).values
        else:
            raise ValueError(
                f"period_fusing={period_fusing!r}; expected 'mean', 'multiply' or 'max'"
            )
        self.scale = (wave * (max_scale - min_scale) + min_scale).unsqueeze(0)

    def triangle_wave(self, values: torch.Tensor, period: float) -> torch.Tensor:
        """See :func:`triangle_wave`."""
        return triangle_wave(values, period)


class TrapezoidPredictionGuider(LinearPredictionGuider):
    """Per-frame scale rising over the first ``edge_perc`` of frames, then falling.

    The plateau between the edges is 1.0 (not ``max_scale``), as in the released
    configurations.
    """

    def __init__(
        self,
        max_scale: float,
        num_frames: int,
        min_scale: float = 1.0,
        edge_perc: float = 0.1,
        additional_cond_keys: str | Sequence[str] | None = None,
    ) -> None:
        super().__init__(max_scale, num_frames, min_scale, additional_cond_keys)
        n_edge = int(num_frames * edge_perc)
        rise = torch.linspace(min_scale, max_scale, n_edge)
        plateau = torch.ones(num_frames - 2 * n_edge)
        self.scale = torch.cat([rise, plateau, torch.flip(rise, [0])]).unsqueeze(0)


class SpatiotemporalPredictionGuider(LinearPredictionGuider):
    """Scale over a (time, view) grid: half a linear ramp over time plus half a triangle
    wave over views, mapped to ``[min_scale, max_scale]`` (SV4D).

    Args:
        num_frames: total frames ``T * num_views`` per sample, laid out time-major.
        num_views: views per time step.
    """

    def __init__(
        self,
        max_scale: float,
        num_frames: int,
        num_views: int = 1,
        min_scale: float = 1.0,
        additional_cond_keys: str | Sequence[str] | None = None,
    ) -> None:
        super().__init__(max_scale, num_frames, min_scale, additional_cond_keys)
        if num_frames % num_views:
            raise ValueError(f"num_frames={num_frames} is not a multiple of num_views={num_views}")
        n_time = num_frames // num_views
        grid = torch.zeros(num_frames).view(n_time, num_views)
        grid += torch.linspace(0, 1, n_time)[:, None] * 0.5
        grid += self.triangle_wave(torch.linspace(0, 1, num_views))[None, :] * 0.5
        self.scale = (grid.flatten() * (max_scale - min_scale) + min_scale).unsqueeze(0)

    def triangle_wave(self, values: torch.Tensor, period: float = 1) -> torch.Tensor:
        """See :func:`triangle_wave`."""
        return triangle_wave(values, period)
