"""Image-to-video requests of the demo pages (SVD family, SV3D): model table, checked
requests, input fitting, sampling and mp4 output (through ``sgm.inference.video``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import values
from ..errors import InputError
from ..inference.releases import config_path, get_release, releases
from .options import DemoOptions, ModelFiles, model_files


@dataclass(frozen=True)
class VideoVersion:
    """Defaults of one released video model."""

    frames: int
    steps: int
    width: int = 1024
    height: int = 576
    decoding_t: int = 14
    cond_aug: float = 0.02

    @property
    def is_sv3d(self) -> bool:
        return self.width == self.height


# the video releases of the registry (sgm.inference.releases) and their page defaults
VIDEO_VERSIONS = {
    r.name: VideoVersion(r.num_frames, r.num_steps, r.width, r.height, r.decoding_t, r.cond_aug)
    for r in releases("video")
}


def video_model(version: str, options: DemoOptions) -> ModelFiles:
    """Config (the release's packaged ``sampling/<version>.yaml``) and checkpoint
    (``<version>.safetensors``) of a released video model."""
    if version not in VIDEO_VERSIONS:
        raise InputError(
            f"unknown video model {version!r}; expected one of {', '.join(VIDEO_VERSIONS)}"
        )
    release = get_release(version)
    config = config_path(release)
    return model_files(version, config.name, release.ckpt, config.parent, options)


@dataclass
class VideoRequest:
    """What a video page asks for; :func:`check_video_request` validates it."""

    version: str = "svd_xt"
    width: int = 1024
    height: int = 576
    frames: int = 25
    steps: int = 30
    fps: int = 6
    motion_bucket_id: int = 127
    cond_aug: float = 0.02
    seed: int = 23
    decoding_t: int = 14
    elevation_deg: float = 5.0
    polars_rad: list[float] | None = field(default=None, repr=False)
    azimuths_rad: list[float] | None = field(default=None, repr=False)


def check_video_request(request: VideoRequest) -> VideoRequest:
    """The request if every value is usable, else an ``InputError`` naming the field."""
    if request.version not in VIDEO_VERSIONS:
        raise InputError(f"unknown video model {request.version!r}")
    for name in ("width", "height"):
        value = values.whole(name, getattr(request, name), 64)
        if value % 64:
            raise InputError(f"{name} {value} is not a multiple of 64")
    values.whole("number of frames", request.frames, 1)
    values.whole("steps", request.steps, 1)
    values.whole("fps", request.fps, 1)
    values.whole("motion bucket id", request.motion_bucket_id, 0, 1023)
    values.seed(request.seed)
    values.whole("decoding_t", request.decoding_t, 1)
    values.finite("cond_aug", request.cond_aug, low=0.0)
    elevation = values.finite("elevation_deg", request.elevation_deg)
    if request.version == "sv3d_p":
        if not -90.0 < elevation < 90.0:
            raise InputError(f"elevation must be in (-90, 90) degrees, got {request.elevation_deg}")
        for name in ("polars_rad", "azimuths_rad"):
            angles = getattr(request, name)
            if angles is not None and len(angles) != request.frames:
                raise InputError(f"{name} needs {request.frames} values, got {len(angles)}")
            if angles is not None:
                values.finite_list(name, angles)
    return request


def open_image(image: Any) -> Any:
    """An uploaded file, path or PIL image as a PIL image; unreadable -> ``InputError``."""
    from PIL import Image

    from ..image_files import check_size, read_image

    if image is None:
        raise InputError("no input image: upload one first")
    if isinstance(image, Image.Image):
        check_size(*image.size, "input image")
        return image
    # the size the file's header claims is checked before decoding
    return read_image(image, f"input image {getattr(image, 'name', image)}")


def fit_image(image: Any, width: int, height: int) -> Any:
    """RGB ``width x height`` image: transparency composited on white, scaled to cover
    the frame (LANCZOS) and centre-cropped."""
    from PIL import Image

    image = open_image(image)
    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    image = image.convert("RGB")
    scale = max(width / image.width, height / image.height)
    size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    image = image.resize(size, Image.LANCZOS)
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    return image.crop((left, top, left + width, top + height))


def input_tensor(image: Any, request: VideoRequest) -> torch.Tensor:
    """The conditioning image ``(1, 3, H, W)`` in [-1, 1] for ``request``'s model."""
    from ..inference.video import prepare_sv3d_image, prepare_svd_image

    if VIDEO_VERSIONS[request.version].is_sv3d and request.width == request.height:
        return prepare_sv3d_image(open_image(image), size=request.width)
    return prepare_svd_image(fit_image(image, request.width, request.height))


def load_model(
    files: ModelFiles, request: VideoRequest, device: str = "auto", low_vram: bool = False
) -> torch.nn.Module:
    """The video engine of ``files`` for ``request``'s frames and steps."""
    from ..inference.video import load_video_model
    from ..util import resolve_device

    return load_video_model(
        files.config,
        files.ckpt,
        resolve_device(device),
        request.frames,
        request.steps,
        offload=low_vram,
    )


def generate_video(
    model: torch.nn.Module, image: torch.Tensor, request: VideoRequest
) -> torch.Tensor:
    """Sample ``(T, 3, H, W)`` frames in [0, 1] for a checked request."""
    from ..inference.video import build_value_dict, sample_video

    check_video_request(request)
    generator = torch.Generator().manual_seed(int(request.seed))
    sv3d = VIDEO_VERSIONS[request.version].is_sv3d
    values = build_value_dict(
        image,
        float(request.cond_aug),
        int(request.fps) - 1,
        int(request.motion_bucket_id),
        generator,
        request.polars_rad,
        request.azimuths_rad,
    )
    return sample_video(
        model,
        values,
        int(request.frames),
        generator=generator,
        decoding_t=int(request.decoding_t),
        replace_last_with_input=sv3d,
    )


def save_outputs(
    frames: torch.Tensor, folder: str | os.PathLike, fps: int, image: torch.Tensor | None = None
) -> Path:
    """Write ``{count:06d}.mp4`` (and the input as ``{count:06d}.png``) into ``folder``,
    never overwriting; returns the mp4 path."""
    from ..inference.helpers import embed_watermark
    from ..inference.video import save_video
    from ..output_files import write_new_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    count = len(list(folder.glob("*.mp4")))
    while (folder / f"{count:06d}.mp4").exists() or (folder / f"{count:06d}.png").exists():
        count += 1
    path = save_video(embed_watermark(frames), folder / f"{count:06d}.mp4", fps)
    if image is not None:
        from .image import to_pil

        picture = to_pil((image.float().cpu() + 1) / 2)[0]
        write_new_file(lambda tmp: picture.save(tmp, format="PNG"), [folder / f"{count:06d}.png"])
    return path
