"""The video command line over many input images on many processes: each image of
``--input_path`` (a file, a folder or a glob) is an item with a global index (seed
``--seed`` + index, file ``<index:09d>.mp4``), sharded over the launcher's processes and
recorded in the output folder's manifest (``sgm.commands.at_scale``)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ..inference.work_items import WorkItem, find_images, input_items
from .at_scale import check_seeds, check_world, run


def sample_at_scale(
    args: argparse.Namespace,
    settings: Any,
    watermark: Callable[[Any], Any],
    faster: dict[str, Any],
) -> Any:
    """Every input not made into a video yet, this process's share; returns the report.
    ``settings``: the checked flags (``sample_video.Settings``); ``watermark(frames)``;
    ``faster``: ``sample_video``'s speed-up arguments (``sgm.commands.speedups``)."""
    import torch

    from ..inference.item_outputs import mp4_bytes
    from ..inference.video import (
        build_value_dict,
        load_video_model,
        prepare_sv3d_image,
        prepare_svd_image,
        sample_video,
    )
    from ..precision import parse_dtype

    world = check_world(args, guided=True)
    items = input_items(find_images(args.input_path), seed=args.seed)
    check_seeds(items, args.seed, "video")  # before the model loads
    s = settings
    params = {
        "version": args.version,
        "checkpoint": s.ckpt.name,
        "num_frames": s.num_frames,
        "num_steps": s.num_steps,
        "fps_id": args.fps_id,
        "motion_bucket_id": args.motion_bucket_id,
        "cond_aug": s.cond_aug,
        "elevations_deg": args.elevations_deg,
        "azimuths_deg": args.azimuths_deg,
        "image_frame_ratio": args.image_frame_ratio,
        "lora": [f"{p.name}:{scale}" for p, scale in args.lora or ()],
    }

    def load(device: Any, split: Any):
        parse_dtype(args.dtype, device)
        model = load_video_model(
            s.config,
            s.ckpt,
            device,
            s.num_frames,
            s.num_steps,
            args.verbose,
            dtype=args.dtype,
            offload=args.low_vram,
            lora=args.lora or (),
            compile_model=args.compile,
        )
        if split is not None:
            model.sampler.guider = split(model.sampler.guider)

        def make(item: WorkItem) -> Any:
            if s.sv3d:
                image = prepare_sv3d_image(item.input, args.image_frame_ratio)
            else:
                image = prepare_svd_image(item.input)
            generator = torch.Generator().manual_seed(item.seed)
            values = build_value_dict(
                image,
                s.cond_aug,
                args.fps_id,
                args.motion_bucket_id,
                generator,
                s.polars,
                s.azimuths,
            )
            frames = sample_video(
                model,
                values,
                s.num_frames,
                generator=generator,
                decoding_t=args.decoding_t,
                replace_last_with_input=s.sv3d,
                **faster,
            )
            return watermark(frames)

        return make

    def encode(item: WorkItem, frames: Any) -> bytes:
        return mp4_bytes(frames, fps=args.fps_id + 1)

    return run(args, world, items, params, s.folder, "mp4", load, encode)
