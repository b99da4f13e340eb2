"""The image command line over a prompts file on many processes: every prompt line x
``--num_samples`` is an item with a global index (seed ``--seed`` + index unless its line
gives one, file ``<index:09d>.png``), sharded over the launcher's processes and recorded
in the output folder's manifest (``sgm.commands.at_scale``)."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from ..cli import check
from ..inference.work_items import Prompt, WorkItem, prompt_items
from .at_scale import check_world, run
from .image_job import Job, _pipeline


def check_entries(job: Job, entries: list[Prompt]) -> None:
    """Each line's own size fits the model (before any model loads)."""
    multiple = 8 * job.base.spec.factor
    for number, entry in enumerate(entries, start=1):
        for name in ("width", "height"):
            value = getattr(entry, name)
            check(
                value is None or value % multiple == 0,
                f"prompt {number} ({entry.prompt[:40]!r}): {name} {value} is not a multiple "
                f"of {multiple}",
            )
        check(
            job.init_image is None or (entry.width is None and entry.height is None),
            f"prompt {number}: a per-prompt size does not apply to --init_image",
        )


def _params(job: Job, item: WorkItem) -> Any:
    width, height = item.width or job.width, item.height or job.height
    return replace(job.params, width=width, height=height, orig_width=width, orig_height=height)


def sample_at_scale(args: argparse.Namespace, job: Job) -> Any:
    """Every item of the job's prompts not made yet, this process's share; returns the
    report."""
    from ..inference.api import text_to_image_refined
    from ..inference.helpers import get_input_image_tensor
    from ..inference.item_outputs import png_bytes

    world = check_world(args, guided=not job.base.is_turbo)
    check_entries(job, job.entries)
    items = prompt_items(job.entries, args.num_samples, args.seed)
    params = {**job.meta, "num_samples": args.num_samples}

    def load(device: Any, split: Any):
        base = _pipeline(job.base, args, lora=True, device=device)
        refiner = None
        if job.refiner is not None:
            refiner = _pipeline(job.refiner, args, lora=False, device=device)
        for pipeline in (base, refiner):
            if pipeline is not None and split is not None:
                pipeline.guider_wrapper = split
        image = None
        if job.init_image is not None:
            image = get_input_image_tensor(job.init_image, base.device)

        def make(item: WorkItem) -> Any:
            params = _params(job, item)
            negative = (
                args.negative_prompt if item.negative_prompt is None else item.negative_prompt
            )
            if refiner is not None:
                out = text_to_image_refined(
                    base,
                    refiner,
                    params,
                    item.prompt,
                    negative,
                    seed=item.seed,
                    refiner_strength=args.refiner_strength,
                )
            elif image is not None:
                out = base.image_to_image(params, image, item.prompt, negative, seed=item.seed)
            else:
                out = base.text_to_image(params, item.prompt, negative, seed=item.seed)
            return out[0]

        return make

    def encode(item: WorkItem, image: Any) -> bytes:
        meta = {**job.meta, "prompt": item.prompt, "seed": str(item.seed)}
        meta.update(width=str(image.shape[-1]), height=str(image.shape[-2]))
        if item.negative_prompt is not None and "negative_prompt" in meta:
            meta["negative_prompt"] = item.negative_prompt
        return png_bytes(image, meta)

    return run(args, world, items, params, job.output, "png", load, encode)
