"""The released models: one ``Release`` each, the only list of them in sgm.

Every command line, demo page, ``SamplingPipeline``, the converter and the benchmarks
read names, configs, checkpoint file names and defaults from here::

    from sgm.inference.releases import config_path, get_release, releases

    svd = get_release("svd_xt")          # Release(name="svd_xt", kind="video", ...)
    config_path(svd)                     # .../sgm/configs/sampling/svd_xt.yaml
    [r.name for r in releases("image")]  # sdxl_base_1.0, sdxl_base_0.9, sd2.1, ...

``config`` is relative to the configs folder inside the package (``sgm/configs``), so
the paths hold in an installed wheel as in the source checkout.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from ..errors import InputError

KINDS = ("image", "video", "sv4d")


class ModelArchitecture(str, Enum):
    """Released image models (``SamplingPipeline(model_id=...)``)."""

    SD_2_1 = "stable-diffusion-v2-1"
    SD_2_1_768 = "stable-diffusion-v2-1-768"
    SDXL_V0_9_BASE = "stable-diffusion-xl-v0-9-base"
    SDXL_V0_9_REFINER = "stable-diffusion-xl-v0-9-refiner"
    SDXL_V1_BASE = "stable-diffusion-xl-v1-base"
    SDXL_V1_REFINER = "stable-diffusion-xl-v1-refiner"
    SDXL_TURBO = "stable-diffusion-xl-turbo"
    SD_TURBO = "stable-diffusion-turbo"


@dataclass(frozen=True)
class Release:
    """One released model: where its config and weights are, and how it samples by default.

    ``sampler`` and ``guider`` are class names of ``sgm.modules.diffusionmodules.sampling``
    and ``.guiders`` (the values of ``SamplingParams``' enums for image models);
    ``conditions_on`` are the ``input_key``s of the config's conditioner, in order.
    """

    name: str
    kind: str
    config: str
    ckpt: str
    width: int
    height: int
    num_frames: int | None
    num_steps: int
    sampler: str
    guider: str
    conditions_on: tuple[str, ...]
    label: str = ""  # the demo pages' name
    # image models
    architecture: ModelArchitecture | None = None
    is_legacy: bool = False
    is_guided: bool = True
    refiner: str | None = None
    channels: int = 4
    factor: int = 8
    # video, SV3D and SV4D models
    max_scale: float | None = None
    min_scale: float | None = None
    decoding_t: int | None = None
    cond_aug: float | None = None
    fps_id: int | None = None
    motion_bucket_id: int | None = None
    n_time: int | None = None  # SV4D: frames x views of one sampled window
    n_view: int | None = None
    elevation_deg: float | None = None  # SV4D: default camera values
    azimuths_deg: tuple[float, ...] | None = None
    window_overlap: int | None = None  # SV4D: frames shared by consecutive windows

    @property
    def is_turbo(self) -> bool:
        """A distilled few-step model (1 to 4 steps, no guidance)."""
        return self.kind == "image" and not self.is_guided

    @property
    def is_sv3d(self) -> bool:
        return self.name.startswith("sv3d")


_SDXL_KEYS = (
    "txt",
    "txt",
    "original_size_as_tuple",
    "crop_coords_top_left",
    "target_size_as_tuple",
)
_REFINER_KEYS = ("txt", "original_size_as_tuple", "crop_coords_top_left", "aesthetic_score")
_SVD_KEYS = ("cond_frames_without_noise", "fps_id", "motion_bucket_id", "cond_frames", "cond_aug")
_SV3D_KEYS = ("cond_frames_without_noise", "cond_frames", "cond_aug")
_SV4D_KEYS = (
    "cond_frames_without_noise",
    "cond_frames",
    "polar_rad",
    "azimuth_rad",
    "cond_view",
    "cond_motion",
)


def _image(
    name: str,
    label: str,
    arch: ModelArchitecture,
    size: int,
    config: str,
    ckpt: str,
    keys: tuple[str, ...],
    is_legacy: bool,
    refiner: str | None = None,
) -> Release:
    return Release(
        name,
        "image",
        f"inference/{config}",
        ckpt,
        size,
        size,
        None,
        50,
        "EulerEDMSampler",
        "VanillaCFG",
        keys,
        label,
        arch,
        is_legacy,
        refiner=refiner,
    )


def _turbo(name: str, label: str, arch: ModelArchitecture, config: str, ckpt: str, keys) -> Release:
    return Release(
        name,
        "image",
        f"inference/{config}",
        ckpt,
        512,
        512,
        None,
        1,
        "SubstepSampler",
        "IdentityGuider",
        keys,
        label,
        arch,
        is_legacy=False,
        is_guided=False,
    )


def _video(name: str, frames: int, steps: int, xt: bool, **extra) -> Release:
    scales = {"max_scale": 3.0, "min_scale": 1.5} if xt else {"max_scale": 2.5, "min_scale": 1.0}
    values = dict(decoding_t=14, cond_aug=0.02, fps_id=6, motion_bucket_id=127, **scales)
    values.update(extra)
    return Release(
        name,
        "video",
        f"sampling/{name}.yaml",
        f"{name}.safetensors",
        1024,
        576,
        frames,
        steps,
        "EulerEDMSampler",
        "LinearPredictionGuider",
        _SVD_KEYS,
        name,
        **values,
    )


def _sv3d(name: str, keys: tuple[str, ...]) -> Release:
    return Release(
        name,
        "video",
        f"sampling/{name}.yaml",
        f"{name}.safetensors",
        576,
        576,
        21,
        50,
        "EulerEDMSampler",
        "TrianglePredictionGuider",
        keys,
        name,
        max_scale=2.5,
        min_scale=1.0,
        decoding_t=14,
        cond_aug=1e-5,
        fps_id=6,
        motion_bucket_id=127,
    )


def _sv4d(
    name: str,
    steps: int,
    guider: str,
    scales: tuple[float, float],
    window: tuple[int, int],
    camera: tuple[float, tuple[float, ...] | None],
    overlap: int = 1,
) -> Release:
    return Release(
        name,
        "sv4d",
        f"sampling/{name}.yaml",
        f"{name}.safetensors",
        576,
        576,
        21,
        steps,
        "EulerEDMSampler",
        guider,
        _SV4D_KEYS,
        name,
        max_scale=scales[0],
        min_scale=scales[1],
        decoding_t=4,
        cond_aug=0.0,
        n_time=window[0],
        n_view=window[1],
        elevation_deg=camera[0],
        azimuths_deg=camera[1],
        window_overlap=overlap,
    )


_A = ModelArchitecture
_RELEASES = (
    _image(
        "sdxl_base_1.0",
        "SDXL-base-1.0",
        _A.SDXL_V1_BASE,
        1024,
        "sd_xl_base.yaml",
        "sd_xl_base_1.0.safetensors",
        _SDXL_KEYS,
        False,
        refiner="sdxl_refiner_1.0",
    ),
    _image(
        "sdxl_base_0.9",
        "SDXL-base-0.9",
        _A.SDXL_V0_9_BASE,
        1024,
        "sd_xl_base.yaml",
        "sd_xl_base_0.9.safetensors",
        _SDXL_KEYS,
        False,
        refiner="sdxl_refiner_0.9",
    ),
    _image(
        "sd2.1",
        "SD-2.1",
        _A.SD_2_1,
        512,
        "sd_2_1.yaml",
        "v2-1_512-ema-pruned.safetensors",
        ("txt",),
        True,
    ),
    _image(
        "sd2.1_768",
        "SD-2.1-768",
        _A.SD_2_1_768,
        768,
        "sd_2_1_768.yaml",
        "v2-1_768-ema-pruned.safetensors",
        ("txt",),
        True,
    ),
    _image(
        "sdxl_refiner_0.9",
        "SDXL-refiner-0.9",
        _A.SDXL_V0_9_REFINER,
        1024,
        "sd_xl_refiner.yaml",
        "sd_xl_refiner_0.9.safetensors",
        _REFINER_KEYS,
        True,
    ),
    _image(
        "sdxl_refiner_1.0",
        "SDXL-refiner-1.0",
        _A.SDXL_V1_REFINER,
        1024,
        "sd_xl_refiner.yaml",
        "sd_xl_refiner_1.0.safetensors",
        _REFINER_KEYS,
        True,
    ),
    # distilled few-step models: no classifier-free guidance (sgm.inference.turbo)
    _turbo(
        "sdxl_turbo",
        "SDXL-Turbo",
        _A.SDXL_TURBO,
        "sd_xl_base.yaml",
        "sd_xl_turbo_1.0.safetensors",
        _SDXL_KEYS,
    ),
    _turbo("sd_turbo", "SD-Turbo", _A.SD_TURBO, "sd_2_1.yaml", "sd_turbo.safetensors", ("txt",)),
    _video("svd", 14, 25, xt=False),
    _video("svd_image_decoder", 14, 25, xt=False),
    _video("svd_xt", 25, 30, xt=True),
    _video("svd_xt_image_decoder", 25, 30, xt=True),
    _video("svd_xt_1_1", 25, 30, xt=True, decoding_t=7),
    _sv3d("sv3d_u", _SV3D_KEYS),
    _sv3d("sv3d_p", (*_SV3D_KEYS, "polars_rad", "azimuths_rad")),
    _sv4d("sv4d", 20, "SpatiotemporalPredictionGuider", (2.0, 1.0), (5, 8), (10.0, None)),
    # the original's 4-view script asks for min_cfg 2.0, which its linear guider ignores
    _sv4d(
        "sv4d2",
        50,
        "LinearPredictionGuider",
        (2.0, 1.0),
        (12, 4),
        (0.0, (0, 60, 120, 180, 240)),
        overlap=0,
    ),
    _sv4d(
        "sv4d2_8views",
        50,
        "SpatiotemporalPredictionGuider",
        (2.5, 1.5),
        (5, 8),
        (0.0, (0, 30, 75, 120, 165, 210, 255, 300, 330)),
    ),
)
RELEASES: dict[str, Release] = {r.name: r for r in _RELEASES}


def releases(kind: str | None = None) -> list[Release]:
    """Every release, or those of one ``kind`` (``"image"``, ``"video"`` or ``"sv4d"``),
    in the registry's order."""
    if kind is not None and kind not in KINDS:
        raise InputError(f"unknown release kind {kind!r}; expected one of {', '.join(KINDS)}")
    return [r for r in RELEASES.values() if kind is None or r.kind == kind]


def names(kind: str | None = None) -> list[str]:
    """The release names (of one ``kind``)."""
    return [r.name for r in releases(kind)]


def get_release(name: str | Release, kind: str | None = None) -> Release:
    """The release called ``name`` (of ``kind`` if given); an ``InputError`` listing the
    known names otherwise."""
    if isinstance(name, Release):
        return name
    release = RELEASES.get(name)
    if release is None or (kind is not None and release.kind != kind):
        known = ", ".join(names(kind))
        what = f"{kind} release" if kind else "release"
        raise InputError(f"unknown {what} {name!r}; expected one of {known}")
    return release


def for_architecture(arch: ModelArchitecture | str) -> Release:
    """The image release of a ``ModelArchitecture`` (or its value)."""
    try:
        arch = ModelArchitecture(arch)
    except ValueError:
        known = ", ".join(m.value for m in ModelArchitecture)
        raise InputError(f"unknown model_id {arch!r}; expected one of {known}") from None
    return next(r for r in _RELEASES if r.architecture is arch)


def configs_dir() -> Path:
    """The configs folder inside the package (``sgm/configs``)."""
    return Path(__file__).resolve().parents[1] / "configs"


def config_path(release: str | Release) -> Path:
    """The packaged config file of a release (a real file of the installed package)."""
    return configs_dir() / get_release(release).config


def checkpoint_path(release: str | Release, folder: str | os.PathLike = "checkpoints") -> Path:
    """Where a release's checkpoint goes: its released file name in ``folder``."""
    return Path(folder) / get_release(release).ckpt
