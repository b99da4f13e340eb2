"""SV3D_p camera orbits for the video page: a fixed-elevation circle or a random smooth
("dynamic") one, and a picture of the cameras around the object."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import values
from ..errors import InputError
from ..inference.video import sv3d_orbit


def dynamic_elevations(
    num_frames: int,
    elevation_deg: float,
    seed: int,
    amplitude_deg: float = 10.0,
    components: int = 3,
) -> list[float]:
    """Elevations (degrees) that wander smoothly around ``elevation_deg`` over one turn
    (a few random low-frequency sinusoids, periodic), equal to ``elevation_deg`` at the
    last frame (the input view) and kept inside (-90, 90)."""
    _check_elevation(elevation_deg)
    num_frames = values.whole("number of frames", num_frames, 1)
    amplitude_deg = values.finite("amplitude_deg", amplitude_deg, low=0.0)
    components = values.whole("components", components, 1)
    rng = np.random.RandomState(values.seed(seed))
    phase = np.linspace(0.0, 2 * math.pi, num_frames + 1)[1:]
    wave = np.zeros(num_frames)
    for k in range(1, components + 1):
        wave += rng.uniform(-1, 1) * np.sin(k * phase + rng.uniform(0, 2 * math.pi))
    wave -= wave[-1]
    peak = max(np.abs(wave).max(), 1e-12)
    room = min(amplitude_deg, 89.0 - abs(float(elevation_deg)))
    return (float(elevation_deg) + wave / peak * room).tolist()


def orbit(
    num_frames: int, elevation_deg: float, dynamic: bool = False, seed: int = 0
) -> tuple[list[float], list[float]]:
    """``(polars_rad, azimuths_rad)`` of the SV3D_p conditioning (``sv3d_orbit``): a full
    turn ending at the input view, at a fixed or a dynamic elevation."""
    elevations: Any = _check_elevation(elevation_deg)
    num_frames = values.whole("number of frames", num_frames, 1)
    if dynamic:
        elevations = dynamic_elevations(num_frames, elevation_deg, seed)
    return sv3d_orbit(num_frames, elevations)


def _check_elevation(elevation_deg: Any) -> float:
    elevation = values.finite("elevation_deg", elevation_deg)
    if not -90.0 < elevation < 90.0:
        raise InputError(f"elevation must be in (-90, 90) degrees, got {elevation_deg}")
    return elevation


def camera_positions(polars_rad: Sequence[float], azimuths_rad: Sequence[float]) -> np.ndarray:
    """Unit-sphere camera positions ``(N, 3)``: polar angle from +z, azimuth in the xy plane."""
    polar, azimuth = np.asarray(polars_rad, float), np.asarray(azimuths_rad, float)
    return np.stack(
        [np.sin(polar) * np.cos(azimuth), np.sin(polar) * np.sin(azimuth), np.cos(polar)], axis=1
    )


def _project(points: np.ndarray, size: int, tilt: float = math.radians(25)) -> np.ndarray:
    """Orthographic view from slightly above: screen x right, screen y down."""
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    screen_y = -(z * math.cos(tilt) - y * math.sin(tilt))
    scale = size * 0.38
    return np.stack([size / 2 + scale * x, size / 2 + scale * screen_y], axis=1)


def draw_orbit(polars_rad: Sequence[float], azimuths_rad: Sequence[float], size: int = 384) -> Any:
    """A PIL picture of the orbit: the unit sphere's equator, the cameras in order (the
    path), the input view (last frame) in red."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    ring = np.linspace(0, 2 * math.pi, 97)
    equator = _project(np.stack([np.cos(ring), np.sin(ring), np.zeros_like(ring)], 1), size)
    draw.line([tuple(p) for p in equator], fill=(190, 190, 190), width=1)
    centre = _project(np.zeros((1, 3)), size)[0]
    draw.ellipse([centre[0] - 3, centre[1] - 3, centre[0] + 3, centre[1] + 3], fill="black")
    points = _project(camera_positions(polars_rad, azimuths_rad), size)
    draw.line([tuple(p) for p in points], fill=(70, 110, 200), width=2)
    for i, (px, py) in enumerate(points):
        colour = (220, 40, 40) if i == len(points) - 1 else (70, 110, 200)
        draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=colour)
    return image
