"""Text-to-image and image-to-image sampling with SD 2.1, SDXL (base, refiner) and Turbo.

    python scripts/sampling/simple_image_sample.py --version sdxl_base_1.0 \\
        --prompt "a lighthouse at dawn" --num_samples 2 --refiner
    sgm-sample-image --version sd_turbo --prompt "a fox"      # the same, installed

Checkpoints are read from ``--checkpoints`` under their released file names (or
``--ckpt``). Every image is written as ``{count:09}.png`` into ``--output_folder``
(default ``outputs/simple_image_sample/<version>``), with the invisible watermark and the
prompt, seed, model and sampler settings as PNG text chunks; existing files are never
overwritten. Image ``k`` of a prompt uses seed ``--seed + k``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..cli import (
    ArgumentParser,
    add_compile_arg,
    add_device_args,
    add_lora_arg,
    existing_file,
    input_folder,
    output_folder,
    positive_float,
    positive_int,
    run,
    seed,
    setup_logging,
    unit_interval,
)
from ..inference.sampling_params import Discretization, Sampler, TimestepSpacing
from ..inference.specs import SD_XL_BASE_RATIOS
from .at_scale import add_scale_args, at_scale
from .image_job import DEFAULT_PROMPT, REFINERS, TURBO, VERSIONS, sample, validate
from .speedups import add_speedup_args

__all__ = ["REFINERS", "TURBO", "VERSIONS", "build_parser", "main", "sample", "validate"]

BUCKETS = ", ".join(f"{w}x{h}" for w, h in SD_XL_BASE_RATIOS.values())


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default only when it has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, "", []):
            return action.help or ""
        return super()._get_help_string(action)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=f"SDXL's trained sizes (width x height): {BUCKETS}.",
        formatter_class=_HelpFormatter,
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--version",
        choices=list(VERSIONS),
        default="sdxl_base_1.0",
        metavar="VERSION",
        help=f"one of {', '.join(VERSIONS)}",
    )
    model.add_argument(
        "--checkpoints",
        type=input_folder,
        default=Path("checkpoints"),
        help="folder holding the released checkpoint files",
    )
    model.add_argument(
        "--ckpt",
        type=existing_file,
        help="checkpoint file (default: the released name in --checkpoints)",
    )
    model.add_argument(
        "--config",
        type=existing_file,
        help="model config (default: the released one in sgm/configs/inference/)",
    )
    text = parser.add_argument_group("prompts")
    text.add_argument("--prompt", help=f"the text prompt (if none: {DEFAULT_PROMPT!r})")
    text.add_argument(
        "--negative_prompt",
        default="",
        help="SD 2.1 and refiners only: SDXL base zeroes the negative text",
    )
    text.add_argument(
        "--prompts_file",
        type=existing_file,
        help="one prompt a line, or JSON lines with prompt and optionally negative_prompt, "
        "seed, width, height (instead of --prompt); item k of the file (line x sample) is "
        "<k:09d>.png with seed --seed + k, recorded in the folder's manifest.jsonl",
    )
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument(
        "--width",
        type=positive_int,
        help="a multiple of 64 (if none: the model's size, or the init "
        "image's); SDXL is trained on the sizes below",
    )
    sampling.add_argument("--height", type=positive_int, help="a multiple of 64")
    sampling.add_argument(
        "--steps", type=positive_int, help="sampling steps (if none: 50; Turbo: 1, at most 4)"
    )
    samplers = [s.value for s in Sampler]
    sampling.add_argument(
        "--sampler",
        choices=samplers,
        default=Sampler.EULER_EDM.value,
        metavar="NAME",
        help=", ".join(samplers),
    )
    discretizations = [d.value for d in Discretization]
    sampling.add_argument(
        "--discretization",
        choices=discretizations,
        metavar="NAME",
        default=Discretization.LEGACY_DDPM.value,
        help=", ".join(discretizations),
    )
    sampling.add_argument(
        "--timestep_spacing",
        choices=[t.value for t in TimestepSpacing],
        default=TimestepSpacing.ORIGINAL.value,
        help="LegacyDDPMDiscretization's timesteps: the original's, or trailing (few-step "
        "models such as SDXL-Lightning)",
    )
    sampling.add_argument(
        "--cfg_scale",
        type=positive_float,
        default=5.0,
        help="classifier-free guidance scale (Turbo: none)",
    )
    sampling.add_argument(
        "--seed",
        type=seed,
        default=42,
        help="seed of the first image of each prompt (then +1, +2, ...)",
    )
    sampling.add_argument("--num_samples", type=positive_int, default=1, help="images per prompt")
    img2img = parser.add_argument_group("image-to-image and refiner")
    img2img.add_argument(
        "--init_image", type=existing_file, help="start from this image (image-to-image)"
    )
    img2img.add_argument(
        "--strength",
        type=unit_interval,
        default=0.75,
        help="how much of the init image is re-noised, in (0, 1]",
    )
    img2img.add_argument(
        "--refiner",
        nargs="?",
        const="auto",
        metavar="VERSION",
        choices=["auto", *sorted(set(REFINERS.values()))],
        help="finish SDXL base samples with a refiner: sdxl_refiner_0.9, "
        "sdxl_refiner_1.0 or auto (the base's release, when no VERSION)",
    )
    img2img.add_argument(
        "--refiner_strength",
        type=unit_interval,
        default=0.15,
        help="the part of the schedule the refiner denoises, in (0, 1]",
    )
    img2img.add_argument(
        "--refiner_ckpt",
        type=existing_file,
        help="refiner checkpoint (default: its released name in --checkpoints)",
    )
    img2img.add_argument("--refiner_config", type=existing_file, help="refiner model config")
    out = parser.add_argument_group("output and device")
    out.add_argument(
        "--output_folder",
        type=output_folder,
        help="where the PNGs go (if none: outputs/simple_image_sample/<version>)",
    )
    add_device_args(out)
    add_compile_arg(out)
    add_lora_arg(out)
    add_speedup_args(parser, tgate=True)
    out.add_argument("--verbose", action="store_true", help="debug logging")
    add_scale_args(parser, "png")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    return run(lambda: _sample(args), prog="simple_image_sample.py")


def _sample(args: argparse.Namespace) -> Any:
    """:func:`sample`, or with a prompts file / under a launcher the run at scale."""
    if not at_scale(args):
        return sample(args)
    from .image_at_scale import sample_at_scale

    return sample_at_scale(args, validate(args))


if __name__ == "__main__":
    sys.exit(main())
