"""SV4D and SV4D 2.0: novel-view videos of an object video, from Python.

The result is a grid ``grid[t][v]`` (frame ``t``, view ``v``; view 0 is the input video)
of ``(3, H, W)`` images in [-1, 1] on the host. Windows of ``n_time`` frames by
``n_view`` novel views are sampled on the device; the conditioning images and the
latents of the whole clip stay on the host::

    from sgm.inference import sv4d, video_io

    frames = video_io.read_frames("camel.gif", 21)
    frames = video_io.frames_to_tensor(video_io.preprocess_frames(
        video_io.ping_pong(frames, 21), 576, 0.9))
    device = resolve_device("auto")          # sgm.util.resolve_device
    model = load_video_model(releases.config_path("sv4d2"),  # sgm.inference.releases
                             "checkpoints/sv4d2.safetensors", device=device)
    polars, azimuths = sv4d.orbit_rad(5, 0.0, sv4d.SPECS["sv4d2"].azimuths_deg)
    grid = sv4d.sample_sv4d2(model, sv4d.SPECS["sv4d2"], frames, polars, azimuths,
                             num_steps=50, generator=torch.Generator().manual_seed(23),
                             device=device)

- SV4D (:func:`sample_sv4d`): SV3D gives the views of frame 0 (:func:`sv3d_reference`),
  an anchor pass samples frames 4, 8, ..., 20, then dense windows ``[t0, t0 + 4]`` are
  sampled step by step, conditioned on the window's last frame on even steps (frames
  reversed) and on its first frame on odd steps.
- SV4D 2.0 (:func:`sample_sv4d2`): no SV3D; the first window sees zeroed reference views
  (image-only indicator 0), later windows the views generated for their first frame.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..models.engine_run import EngineRun
from .sv4d_sampling import (  # noqa: F401  (re-exported)
    SPECS,
    SV3D_VIEWS,
    SV4D_FRAMES,
    SV4D_SUBSAMPLED_VIEWS,
    Grid,
    Spec,
    build_sampler,
    check_size,
    check_steps,
    condition,
    decode,
    encoding_chunks,
    latent_noise,
    new_grid,
    orbit_rad,
    sample_dense_window,
    sample_window,
    spec_of_config,
    sv4d2_cameras,
    sv4d_cameras,
)

logger = logging.getLogger(__name__)


def window_starts(spec: Spec, n_frames: int) -> list[int]:
    """First frames of the windows covering ``n_frames`` frames: every
    ``n_time - window_overlap`` frames, plus a last window ending on the last frame
    (SV4D 2.0 4-view at 21 frames: 0, 9; 8-view: 0, 4, 8, 12, 16)."""
    if n_frames < spec.n_time:
        raise InputError(f"{spec.name} needs at least {spec.n_time} frames, got {n_frames}")
    starts = list(range(0, n_frames - spec.n_time + 1, spec.n_time - spec.window_overlap))
    if starts[-1] + spec.n_time < n_frames:
        starts.append(n_frames - spec.n_time)
    return starts


def _running(model: Any, device: torch.device, encoding_t: int | None, dtype: Any) -> EngineRun:
    return EngineRun(model, device, dtype, ema=False, encoding_t=encoding_t)


def _column(grid: Grid, frames: Sequence[int], view: int) -> torch.Tensor:
    return torch.stack([grid[t][view] for t in frames])


def _row(grid: Grid, frame: int, views: Sequence[int]) -> torch.Tensor:
    return torch.stack([grid[frame][v] for v in views])


def _fill(
    grid: Grid,
    images: torch.Tensor,
    frames: Sequence[int],
    views: Sequence[int],
    only_empty: bool = False,
) -> None:
    images = images.view(len(frames), len(views), *images.shape[1:])
    for i, t in enumerate(frames):
        for j, v in enumerate(views):
            if not (only_empty and grid[t][v] is not None):
                grid[t][v] = images[i, j]


@torch.no_grad()
def sv3d_reference(
    sv3d_model: Any,
    image: torch.Tensor,
    polars: np.ndarray | None,
    azimuths: np.ndarray | None,
    generator: torch.Generator,
    decoding_t: int = 4,
    fps_id: int = 6,
    motion_bucket_id: int = 127,
    cond_aug: float = 1e-5,
    num_steps: int | None = None,
) -> torch.Tensor:
    """SV3D's 21-view orbit of ``image`` ``(3, H, W)`` in [-1, 1], rolled so that the input
    view comes first: ``(21, 3, H, W)`` in [-1, 1] on the host. ``polars``/``azimuths``
    (SV3D_p only) as :func:`orbit_rad` gives them; ``num_steps`` overrides the model's
    sampler for this call."""
    from .video import build_value_dict, sample_video

    values = build_value_dict(
        image[None].float(),
        cond_aug,
        fps_id,
        motion_bucket_id,
        generator,
        None if polars is None else polars.tolist(),
        None if azimuths is None else azimuths.tolist(),
    )
    saved = sv3d_model.sampler.num_steps
    if num_steps is not None:
        check_steps(num_steps)
        sv3d_model.sampler.num_steps = int(num_steps)
    try:
        frames = sample_video(
            sv3d_model,
            values,
            SV3D_VIEWS,
            generator=generator,
            decoding_t=decoding_t,
            replace_last_with_input=True,
        )
    finally:
        sv3d_model.sampler.num_steps = saved
    return torch.roll(frames.float().cpu() * 2 - 1, 1, 0)


@torch.no_grad()
def sample_sv4d(
    model: Any,
    frames: torch.Tensor,
    reference: torch.Tensor,
    polars: np.ndarray,
    azimuths: np.ndarray,
    num_steps: int,
    generator: torch.Generator,
    device: torch.device | str,
    decoding_t: int = 4,
    encoding_t: int | None = 8,
    dtype: Any = None,
    verbose: bool = False,
) -> Grid:
    """SV4D: 8 novel views of a 21-frame video.

    ``frames``: ``(21, 3, H, W)`` in [-1, 1]; ``reference``: SV3D's rolled orbit
    (:func:`sv3d_reference`), of which views ``SV4D_SUBSAMPLED_VIEWS`` are used;
    ``polars``/``azimuths``: that orbit's 21 camera values (:func:`orbit_rad`).
    Returns the ``21 x 9`` grid.
    """
    check_steps(num_steps)
    spec = SPECS["sv4d"]
    n_time, n_view, n_frames = spec.n_time, spec.n_view, frames.shape[0]
    if n_frames != SV4D_FRAMES:
        raise InputError(f"SV4D samples {SV4D_FRAMES} frames, got {n_frames}")
    size = frames.shape[-1]
    device = torch.device(device)
    grid = new_grid(frames, n_view + 1)
    for i, v in enumerate(SV4D_SUBSAMPLED_VIEWS):
        grid[0][i] = reference[v].float().cpu()
    grid[0][0] = frames[0].float().cpu()
    cams = sv4d_cameras(polars, azimuths, n_time)
    sampler = build_sampler(spec, num_steps, verbose)
    views = list(range(1, n_view + 1))
    with _running(model, device, encoding_t, dtype):
        anchors = list(range(n_time - 1, n_frames, n_time - 1))  # 4, 8, 12, 16, 20
        logger.info("SV4D anchor frames %s", anchors)
        window = condition(model, _column(grid, anchors, 0), _row(grid, 0, views), *cams, device)
        z = sample_window(model, sampler, window, latent_noise(spec.n_frames, size, generator))
        _fill(grid, decode(model, z, decoding_t), anchors, views, only_empty=True)
        del window, z
        for t0 in range(0, n_frames - 1, n_time - 1):  # 0, 4, 8, 12, 16
            window_frames = list(range(t0, t0 + n_time))
            logger.info("SV4D dense frames %s", window_frames)
            latents = torch.randn(
                (n_frames, n_view + 1, 4, size // 8, size // 8),
                generator=generator,
                device=generator.device,
            ).cpu()
            forward = condition(
                model,
                _column(grid, window_frames, 0),
                _row(grid, window_frames[0], views),
                *cams,
                device,
            )
            backward = condition(
                model,
                _column(grid, window_frames[::-1], 0),
                _row(grid, window_frames[-1], views),
                *cams,
                device,
            )
            sample_dense_window(
                model, sampler, latents, window_frames, views, forward, backward, device
            )
            del forward, backward
            z = latents[window_frames][:, views].flatten(0, 1).to(device)
            _fill(grid, decode(model, z, decoding_t), window_frames, views)
    return grid


@torch.no_grad()
def sample_sv4d2(
    model: Any,
    spec: Spec,
    frames: torch.Tensor,
    polars: np.ndarray,
    azimuths: np.ndarray,
    num_steps: int,
    generator: torch.Generator,
    device: torch.device | str,
    decoding_t: int = 4,
    encoding_t: int | None = 8,
    dtype: Any = None,
    verbose: bool = False,
) -> Grid:
    """SV4D 2.0: ``spec.n_view`` novel views of a video ``(T, 3, H, W)`` in [-1, 1].

    ``polars``/``azimuths``: ``n_view + 1`` camera values, the input view first
    (:func:`orbit_rad`). Returns the ``T x (n_view + 1)`` grid.
    """
    check_steps(num_steps)
    n_time, n_view = spec.n_time, spec.n_view
    n_frames, size = frames.shape[0], frames.shape[-1]
    starts = window_starts(spec, n_frames)
    if len(polars) != n_view + 1 or len(azimuths) != n_view + 1:
        raise InputError(f"{spec.name} needs {n_view + 1} camera values, got {len(polars)}")
    device = torch.device(device)
    grid = new_grid(frames, n_view + 1)
    for v in range(1, n_view + 1):
        grid[0][v] = torch.zeros_like(grid[0][0])
    cams = sv4d2_cameras(polars, azimuths, n_time)
    sampler = build_sampler(spec, num_steps, verbose)
    views = list(range(1, n_view + 1))
    with _running(model, device, encoding_t, dtype):
        for t0 in starts:
            window_frames = list(range(t0, t0 + n_time))
            logger.info("%s frames %s", spec.name, window_frames)
            window = condition(
                model,
                _column(grid, window_frames, 0),
                _row(grid, t0, views),
                *cams,
                device,
                multi_view=t0 != 0,
            )
            z = sample_window(model, sampler, window, latent_noise(spec.n_frames, size, generator))
            _fill(grid, decode(model, z, decoding_t), window_frames, views)
    return grid


def first_frame_video(frames: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """SV4D's frame-0 video, as the SV3D pass made it: the input frame, then SV3D's views
    ``SV4D_SUBSAMPLED_VIEWS[1:]`` of it; ``(9, 3, H, W)`` in [0, 1]. (The dense windows
    resample frame 0's views later; this video shows the views they started from.)"""
    views = [frames[0].float().cpu()] + [
        reference[v].float().cpu() for v in SV4D_SUBSAMPLED_VIEWS[1:]
    ]
    return ((torch.stack(views) + 1) / 2).clamp(0, 1)


def view_video(grid: Grid, view: int) -> torch.Tensor:
    """Frames of one view, ``(T, 3, H, W)`` in [0, 1]."""
    return ((torch.stack([row[view] for row in grid]) + 1) / 2).clamp(0, 1)


def diagonal_video(grid: Grid) -> torch.Tensor:
    """SV4D's diagonal video: the view turns as time runs (view ``(t // (T // V)) mod V``
    at frame ``t``), ``(T, 3, H, W)`` in [0, 1]."""
    n_frames, n_views = len(grid), len(grid[0])
    step = max(1, n_frames // n_views)
    frames = [grid[t][(t // step) % n_views] for t in range(n_frames)]
    return ((torch.stack(frames) + 1) / 2).clamp(0, 1)
