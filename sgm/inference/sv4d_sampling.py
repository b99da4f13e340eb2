"""SV4D and SV4D 2.0 sampling parts: release specs, cameras, the sampler, window
conditioning, whole-run and step-by-step window sampling, decoding. The runs that put
them together are in :mod:`sgm.inference.sv4d`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, InputError
from ..models.engine_run import EngineRun, to_unit
from ..modules.diffusionmodules.sampling import StepInputs
from .samplers import make_sampler

logger = logging.getLogger(__name__)

SV4D_FRAMES = 21
SV3D_VIEWS = 21
# SV3D orbit views (rolled so the input view comes first) that SV4D uses as its 8 views
SV4D_SUBSAMPLED_VIEWS = (0, 2, 5, 7, 9, 12, 14, 16, 19)
SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 700.0, 7.0
FORCE_UC_ZERO = ("cond_frames", "cond_frames_without_noise", "cond_view", "cond_motion")
GUIDED_EXTRA_KEYS = ("cond_view", "cond_motion")
LATENT_CHANNELS, LATENT_FACTOR = 4, 8

Grid = list  # grid[t][v]: (3, H, W) tensor in [-1, 1] on the host, or None


@dataclass(frozen=True)
class Spec:
    """What a release samples: ``n_time`` frames by ``n_view`` novel views per window,
    its guider (``max_scale``, ``min_scale``), and its default camera values."""

    name: str
    n_time: int
    n_view: int
    guider: str
    max_scale: float
    min_scale: float = 1.0
    elevation_deg: float = 0.0
    azimuths_deg: tuple[float, ...] | None = None
    window_overlap: int = 1  # frames shared by consecutive windows

    @property
    def n_frames(self) -> int:
        """Images per window: ``n_time * n_view``."""
        return self.n_time * self.n_view


SPECS = {
    "sv4d": Spec("sv4d", 5, 8, "SpatiotemporalPredictionGuider", 2.0, 1.0, 10.0),
    # the original's 4-view script asks for min_cfg 2.0, which its linear guider ignores
    "sv4d2": Spec(
        "sv4d2",
        12,
        4,
        "LinearPredictionGuider",
        2.0,
        1.0,
        0.0,
        (0, 60, 120, 180, 240),
        window_overlap=0,
    ),
    "sv4d2_8views": Spec(
        "sv4d2_8views",
        5,
        8,
        "SpatiotemporalPredictionGuider",
        2.5,
        1.5,
        0.0,
        (0, 30, 75, 120, 165, 210, 255, 300, 330),
    ),
}


def spec_of_config(config: Any) -> Spec | None:
    """The spec whose window (``N_TIME`` x ``N_VIEW``) a loaded config declares."""
    n_time, n_view = config.get("N_TIME"), config.get("N_VIEW")
    for spec in SPECS.values():
        if (spec.n_time, spec.n_view) == (n_time, n_view) and spec.name != "sv4d":
            return spec
    return None


# --------------------------------------------------------------------------- cameras


def _per_view(values: float | Sequence[float] | None, count: int, name: str) -> list[float]:
    if isinstance(values, (int, float)):
        return [float(values)] * count
    values = [float(v) for v in values]
    if len(values) != count:
        raise InputError(
            f"{name} needs 1 value or {count} values (one per view), got {len(values)}"
        )
    return values


def orbit_rad(
    count: int,
    elevations_deg: float | Sequence[float],
    azimuths_deg: Sequence[float] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Polars ``90 - elevation`` and azimuths relative to the last view, in radians
    (float64); default azimuths: an even orbit ending at 0."""
    elevations = _per_view(elevations_deg, count, "elevations_deg")
    if azimuths_deg is None:
        azimuths_deg = (np.linspace(0, 360, count + 1)[1:] % 360).tolist()
    if isinstance(azimuths_deg, (int, float)):
        raise InputError(f"azimuths_deg needs {count} values (one per view), got 1")
    azimuths = _per_view(list(azimuths_deg), count, "azimuths_deg")
    polars = np.array([np.deg2rad(90 - e) for e in elevations])
    azims = np.array([np.deg2rad((a - azimuths[-1]) % 360) for a in azimuths])
    return polars, azims


def sv4d_cameras(polars: np.ndarray, azimuths: np.ndarray, n_time: int = 5) -> tuple:
    """SV4D's camera values for its 8 views, repeated for ``n_time`` frames.

    ``polars`` / ``azimuths`` are SV3D's 21-view orbit (:func:`orbit_rad`, the input
    view last). Output view ``j`` shows orbit view ``SV4D_SUBSAMPLED_VIEWS[j] - 1``;
    its azimuth is taken relative to the input view. (The original indexes the orbit
    one view later and subtracts the first view's azimuth: the same numbers for an
    even orbit at one elevation, its default.)
    """
    index = np.array(SV4D_SUBSAMPLED_VIEWS[1:]) - 1
    view_polars = polars[index]
    view_azims = (azimuths[index] - azimuths[-1]) % (2 * np.pi)
    return np.tile(view_polars, n_time), np.tile(view_azims, n_time)


def sv4d2_cameras(polars: np.ndarray, azimuths: np.ndarray, n_time: int) -> tuple:
    """SV4D 2.0's camera values of views ``1..V`` relative to view 0 (the input):
    polar ``(p - p0 + pi/2) mod 2 pi``, azimuth ``(a - a0) mod 2 pi``, per frame."""
    view_polars = (polars[1:] - polars[0] + np.pi / 2) % (2 * np.pi)
    view_azims = (azimuths[1:] - azimuths[0]) % (2 * np.pi)
    return np.tile(view_polars, n_time), np.tile(view_azims, n_time)


# --------------------------------------------------------------------------- sampler


def sampler_config(spec: Spec, num_steps: int, verbose: bool = False) -> dict[str, Any]:
    """The release's sampler config: Euler EDM with its guider and the EDM schedule
    (0.002 .. 700, rho 7)."""
    guider_params: dict[str, Any] = {
        "max_scale": spec.max_scale,
        "num_frames": spec.n_frames,
        "min_scale": spec.min_scale,
        "additional_cond_keys": list(GUIDED_EXTRA_KEYS),
    }
    if spec.guider == "SpatiotemporalPredictionGuider":
        guider_params["num_views"] = spec.n_view
    return {
        "target": "sgm.modules.diffusionmodules.sampling.EulerEDMSampler",
        "params": {
            "num_steps": num_steps,
            "discretization_config": {
                "target": "sgm.modules.diffusionmodules.discretizer.EDMDiscretization",
                "params": {"sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX, "rho": RHO},
            },
            "guider_config": {
                "target": f"sgm.modules.diffusionmodules.guiders.{spec.guider}",
                "params": guider_params,
            },
            "s_churn": 0.0,
            "s_tmin": 0.0,
            "s_tmax": 999.0,
            "s_noise": 1.0,
            "verbose": verbose,
        },
    }


def build_sampler(spec: Spec, num_steps: int, verbose: bool = False) -> Any:
    """The release's sampler (:func:`sampler_config`)."""
    return make_sampler(sampler_config(spec, num_steps, verbose))


@dataclass
class Window:
    """Conditioning of one window: ``c``, ``uc`` and the network's extra inputs."""

    c: dict[str, Any]
    uc: dict[str, Any]
    extra: dict[str, Any]

    def denoiser(self, model: Any) -> Callable[..., torch.Tensor]:
        """The engine's denoiser with this window's network inputs."""
        return EngineRun(model, "cpu").denoiser(**self.extra)

    def step_inputs(self, model: Any, order: torch.Tensor | None = None) -> StepInputs:
        """What a sampler step sees of this window (rows in ``order``)."""
        return StepInputs(self.denoiser(model), self.c, self.uc, order)


def _condition_values(
    motion: torch.Tensor,
    views: torch.Tensor,
    polars: np.ndarray,
    azimuths: np.ndarray,
    device: torch.device,
) -> dict[str, Any]:
    n = motion.shape[0] * views.shape[0]
    return {
        "cond_frames_without_noise": motion.to(device),
        "cond_frames": motion.repeat_interleave(views.shape[0], 0).to(device),
        "cond_view": views.to(device),
        "cond_motion": motion.to(device),
        "polar_rad": torch.tensor(polars, dtype=torch.float32, device=device),
        "azimuth_rad": torch.tensor(azimuths, dtype=torch.float32, device=device),
        "cond_aug": torch.zeros(n, device=device),
    }


@torch.no_grad()
def condition(
    model: Any,
    motion: torch.Tensor,
    views: torch.Tensor,
    polars: np.ndarray,
    azimuths: np.ndarray,
    device: torch.device | str,
    multi_view: bool = True,
) -> Window:
    """Conditioning for a window of ``T = len(motion)`` frames by ``V = len(views)`` views.

    ``motion``: the input view's frames ``(T, 3, H, W)``; ``views``: the novel views of
    the reference frame ``(V, 3, H, W)``; ``polars`` / ``azimuths``: ``T * V`` values.
    ``multi_view=False`` zeroes the reference views and sets the image-only indicator
    to 0 (SV4D 2.0's first window); otherwise the indicator is 1.
    """
    from .helpers import get_unique_embedder_keys_from_conditioner

    device = torch.device(device)
    n = motion.shape[0] * views.shape[0]
    values = _condition_values(motion, views, polars, azimuths, device)
    keys = get_unique_embedder_keys_from_conditioner(model.conditioner)
    unknown = [k for k in keys if k not in values]
    if unknown:
        raise ConfigError(f"SV4D conditioning has no value for the embedder key(s) {unknown}")
    batch = {k: values[k] for k in keys}
    batch["num_video_frames"] = n
    batch_uc = {k: v.clone() if torch.is_tensor(v) else v for k, v in batch.items()}
    c, uc = EngineRun(model, device).condition(batch, batch_uc, FORCE_UC_ZERO, num=n)
    if not multi_view:
        c["cond_view"] = c["cond_view"] * 0
        uc["cond_view"] = uc["cond_view"] * 0
    indicator = torch.zeros(2, n, device=device) + (1.0 if multi_view else 0.0)
    return Window(c, uc, {"image_only_indicator": indicator, "num_video_frames": n})


def latent_noise(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Unit noise ``(n, 4, size/8, size/8)`` from ``generator`` (on its device)."""
    h = size // LATENT_FACTOR
    return torch.randn((n, LATENT_CHANNELS, h, h), generator=generator, device=generator.device)


@torch.no_grad()
def sample_window(
    model: Any,
    sampler: Any,
    window: Window,
    noise: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A whole sampler run from unit ``noise`` for one window; latents on the device."""
    run = EngineRun(model, window.extra["image_only_indicator"].device)
    return run.sample(
        sampler, noise, window.c, window.uc, denoiser=window.denoiser(model), generator=generator
    )


@torch.no_grad()
def sample_dense_window(
    model: Any,
    sampler: Any,
    latents: torch.Tensor,
    frames: Sequence[int],
    views: Sequence[int],
    forward: Window,
    backward: Window,
    device: torch.device | str,
) -> None:
    """SV4D's dense pass over one window, in place on the host ``latents`` (the whole
    ``(n_frames, n_views, 4, h, w)`` matrix of unit noise for the window's entries).

    One sampler run over the window's entries in which even steps see them backward
    (frames reversed, conditioned on the last frame) and odd steps forward
    (``StepInputs``); the run starts from the noise scaled by ``sqrt(1 + sigma_0^2)``.
    """
    device = torch.device(device)
    frames, views = list(frames), list(views)
    rows, cols = torch.tensor(frames)[:, None], torch.tensor(views)[None, :]
    x = latents[rows, cols].flatten(0, 1).to(device)
    reverse = torch.arange(len(x), device=device).view(len(frames), len(views)).flip(0)
    by_parity = (backward.step_inputs(model, reverse.flatten()), forward.step_inputs(model))
    x = EngineRun(model, device).sample(
        sampler, x, forward.c, forward.uc, step_inputs=lambda i: by_parity[i % 2]
    )
    latents[rows, cols] = x.view(len(frames), len(views), *x.shape[1:]).to(latents)


@torch.no_grad()
def decode(model: Any, latents: torch.Tensor, decoding_t: int) -> torch.Tensor:
    """Latents -> images in [-1, 1] on the host, ``decoding_t`` at a time."""
    images = EngineRun(model, latents.device).decode(latents, decoding_t)
    return (to_unit(images.float()) * 2 - 1).cpu()


def encoding_chunks(model: Any, encoding_t: int | None) -> AbstractContextManager[None]:
    """Conditioning frames encoded ``encoding_t`` at a time inside the block."""
    return EngineRun(model, "cpu", encoding_t=encoding_t).chunking()


def _stack(grid: Grid, frames: Sequence[int], column: int) -> torch.Tensor:
    return torch.stack([grid[t][column] for t in frames])


def _views_of(grid: Grid, frame: int, views: Sequence[int]) -> torch.Tensor:
    return torch.stack([grid[frame][v] for v in views])


def new_grid(frames: torch.Tensor, n_views: int) -> Grid:
    """A grid holding the input video as view 0 (``frames``: ``(T, 3, H, W)``)."""
    grid: Grid = [[None] * n_views for _ in range(frames.shape[0])]
    for t in range(frames.shape[0]):
        grid[t][0] = frames[t].float().cpu()
    return grid


def check_size(img_size: int) -> None:
    """Image sizes must be multiples of 64 (the network halves the latents 3 times)."""
    if isinstance(img_size, bool) or int(img_size) != img_size or img_size <= 0 or img_size % 64:
        raise InputError(f"img_size must be a positive multiple of 64, got {img_size!r}")


def check_steps(num_steps: int) -> None:
    """At least one sampling step."""
    if isinstance(num_steps, bool) or int(num_steps) != num_steps or num_steps <= 0:
        raise InputError(f"num_steps must be a positive integer, got {num_steps!r}")
