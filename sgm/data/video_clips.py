"""Video clips for fine-tuning SVD: mp4 in webdataset shards, decoded with PyAV.

:class:`VideoClipSample` decodes a clip, samples ``num_frames`` frames at a target frame
rate, and returns the entries the SVD conditioner reads (per clip)::

    frames                      (T, 3, H, W) in [-1, 1]
    cond_frames_without_noise   the first frame (3, H, W)
    cond_frames                 the first frame + cond_aug * noise
    fps_id                      fps - 1 (the released models' convention)
    motion_bucket_id            from the sample's json, else the default
    cond_aug                    per clip: fixed, or log-normal

:class:`FlattenVideoBatch` then turns a batch of clips into the engine's layout (frames
``(B*T, 3, H, W)``, per-frame vectors, ``num_video_frames`` and ``image_only_indicator``),
and :class:`PerClipSigmaSampling` gives every frame of a clip the same noise level.
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..config import instantiate_from_config
from ..errors import ConfigError, InputError
from ..image_files import ImageTooLarge, check_size
from .image_caption import _size, missing_field, where

VIDEO_KEYS = ("mp4", "webm", "mkv", "mov", "avi")


def _av():
    try:
        import av
    except ImportError as error:
        raise ImportError(
            "decoding video shards needs PyAV: pip install 'sgm[video-data]'"
        ) from error
    return av


def decode_frames(
    data: bytes,
    sample: Mapping,
    field: str,
    num_frames: int,
    fps: float,
    rng: random.Random,
    random_start: bool,
) -> tuple[np.ndarray, float]:
    """``num_frames`` RGB frames (T, H, W, 3) ``1/fps`` seconds apart; and the source fps.

    When the container states its frame count, decoding stops after the last frame used.
    The frame size the stream claims, and the frames held at once, are checked against
    ``sgm.image_files`` limits (``MAX_PIXELS`` a frame, ``MAX_SEQUENCE_PIXELS`` the frames
    held) before they are decoded: an ``ImageTooLarge`` names the shard, sample, field and
    the claimed size.
    """
    av = _av()
    name = f"{where(sample)}: field {field!r}"
    try:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            source_fps = float(stream.average_rate or stream.guessed_rate or 0) or fps
            step = source_fps / fps
            needed = math.floor((num_frames - 1) * step) + 1
            total = int(stream.frames or 0)
            start = None
            if total >= needed:
                start = rng.randint(0, total - needed) if random_start else 0
            context = stream.codec_context
            size = (context.width, context.height)
            held = needed if start is None else start + needed
            check_size(*size, name, frames=held)  # before the first frame is decoded
            frames = []
            for frame in container.decode(stream):
                if (frame.width, frame.height) != size or start is None:
                    size = (frame.width, frame.height)  # what it decodes to, checked too
                    check_size(*size, name, frames=max(held, len(frames) + 1))
                frames.append(frame.to_ndarray(format="rgb24"))
                if start is not None and len(frames) >= start + needed:
                    break
    except ImageTooLarge:
        raise
    except (av.error.FFmpegError, IndexError, ValueError) as error:
        raise InputError(
            f"{where(sample)}: field {field!r} is not a readable video ({error})"
        ) from None
    if len(frames) < needed:
        raise InputError(
            f"{where(sample)}: video has {len(frames)} frames at {source_fps:g} fps, shorter "
            f"than the clip ({num_frames} frames at {fps:g} fps need {needed})"
        )
    if start is None or start + needed > len(frames):
        start = rng.randint(0, len(frames) - needed) if random_start else 0
    index = [start + math.floor(i * step) for i in range(num_frames)]
    return np.stack([frames[i] for i in index]), source_fps


def _resize_crop(
    frames: np.ndarray, size: tuple[int, int], random_crop: bool, rng: random.Random
) -> torch.Tensor:
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    th, tw = size
    height, width = x.shape[-2:]
    scale = max(th / height, tw / width)
    rh, rw = max(th, round(height * scale)), max(tw, round(width * scale))
    x = torch.nn.functional.interpolate(
        x, size=(rh, rw), mode="bilinear", antialias=True, align_corners=False
    )
    top = rng.randint(0, rh - th) if random_crop else (rh - th) // 2
    left = rng.randint(0, rw - tw) if random_crop else (rw - tw) // 2
    return x[..., top : top + th, left : left + tw].clamp(-1.0, 1.0).contiguous()


class VideoClipSample:
    """Webdataset mapper: an mp4 (bytes) -> one SVD training clip (module docstring).

    Args:
        num_frames: frames per clip (14 for SVD, 25 for SVD-XT).
        fps: frame rate the clip is sampled at; ``fps_id = fps - 1``.
        size: ``H`` or ``[H, W]`` (576x1024 for the released models).
        motion_bucket_id: default when the sample's ``json`` has no ``motion_bucket_id``.
        cond_aug: a fixed noise level for the conditioning frame, or
            ``{p_mean, p_std}`` for a log-normal one per clip.
        random_start / random_crop: random clip start and crop position.
        seed: seed of those choices and of the conditioning noise.
    """

    def __init__(
        self,
        num_frames: int = 14,
        fps: float = 6,
        size: int | Sequence[int] = (576, 1024),
        motion_bucket_id: int = 127,
        cond_aug: float | Mapping[str, float] = 0.02,
        video_keys: Sequence[str] = VIDEO_KEYS,
        random_start: bool = True,
        random_crop: bool = True,
        seed: int | None = None,
    ):
        if int(num_frames) <= 0 or not float(fps) > 0:
            raise ConfigError(f"num_frames and fps must be positive, got {num_frames}, {fps}")
        self.num_frames, self.fps = int(num_frames), float(fps)
        self.size = _size(size)
        self.motion_bucket_id = int(motion_bucket_id)
        self.cond_aug = dict(cond_aug) if isinstance(cond_aug, Mapping) else float(cond_aug)
        self.video_keys = tuple(video_keys)
        self.random_start, self.random_crop = bool(random_start), bool(random_crop)
        self.rng = random.Random(seed) if seed is not None else random
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def _cond_aug(self) -> float:
        if isinstance(self.cond_aug, float):
            return self.cond_aug
        return math.exp(
            self.rng.gauss(
                float(self.cond_aug.get("p_mean", -3.0)), float(self.cond_aug.get("p_std", 0.5))
            )
        )

    def __call__(self, sample: dict) -> dict:
        key = next((k for k in self.video_keys if k in sample), None)
        if key is None:
            raise missing_field(sample, "/".join(self.video_keys))
        data = sample[key]
        if not isinstance(data, (bytes, bytearray)):
            raise InputError(f"{where(sample)}: field {key!r} must stay undecoded bytes")
        frames, _ = decode_frames(
            bytes(data), sample, key, self.num_frames, self.fps, self.rng, self.random_start
        )
        clip = _resize_crop(frames, self.size, self.random_crop, self.rng)
        meta = sample.get("json") if isinstance(sample.get("json"), Mapping) else {}
        cond_aug = self._cond_aug()
        first = clip[0]
        noise = torch.randn(first.shape, generator=self.generator)
        return {
            "frames": clip,
            "cond_frames_without_noise": first,
            "cond_frames": first + cond_aug * noise,
            "fps_id": self.fps - 1,
            "motion_bucket_id": int(meta.get("motion_bucket_id", self.motion_bucket_id)),
            "cond_aug": cond_aug,
            "__key__": sample.get("__key__"),
            "__url__": sample.get("__url__"),
        }


class FlattenVideoBatch:
    """Batch step: clips ``(B, T, 3, H, W)`` -> frames ``(B*T, 3, H, W)``; per-clip
    numbers repeated per frame; ``num_video_frames = T``; ``image_only_indicator``
    zeros ``(B, T)``. Conditioning frames stay one per clip."""

    def __init__(
        self,
        frames_key: str = "frames",
        per_frame_keys: Sequence[str] = ("fps_id", "motion_bucket_id", "cond_aug"),
    ):
        self.frames_key = frames_key
        self.per_frame_keys = tuple(per_frame_keys)

    def __call__(self, batch: dict) -> dict:
        clips = batch[self.frames_key]
        if clips.ndim != 5:
            raise InputError(
                f"{self.frames_key!r} must be (B, T, C, H, W), got {tuple(clips.shape)}"
            )
        b, t = clips.shape[:2]
        batch[self.frames_key] = clips.reshape(b * t, *clips.shape[2:])
        for key in self.per_frame_keys:
            batch[key] = torch.as_tensor(batch[key]).repeat_interleave(t, dim=0)
        batch["num_video_frames"] = t
        batch["image_only_indicator"] = torch.zeros(b, t)
        return batch


class PerClipSigmaSampling:
    """A sigma sampler giving all ``num_frames`` frames of a clip the same noise level."""

    def __init__(self, num_frames: int, sigma_sampler_config: Mapping[str, Any]):
        self.num_frames = int(num_frames)
        self.sampler = instantiate_from_config(sigma_sampler_config)

    def __call__(self, n_samples: int, **kwargs: Any) -> torch.Tensor:
        if n_samples % self.num_frames:
            raise InputError(f"{n_samples} frames are not whole clips of {self.num_frames}")
        sigmas = self.sampler(n_samples // self.num_frames, **kwargs)
        return sigmas.repeat_interleave(self.num_frames, dim=0)
