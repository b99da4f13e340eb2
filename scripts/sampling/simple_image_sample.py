"""Text-to-image and image-to-image sampling with SD 2.1, SDXL (base, refiner) and Turbo.

    python scripts/sampling/simple_image_sample.py --version sdxl_base_1.0 \\
        --prompt "a lighthouse at dawn" --num_samples 2 --refiner

Checkpoints are read from ``--checkpoints`` under their released file names (or
``--ckpt``). Every image is written as ``{count:09}.png`` into ``--output_folder``
(default ``outputs/simple_image_sample/<version>``), with the invisible watermark and the
prompt, seed, model and sampler settings as PNG text chunks; existing files are never
overwritten. Image ``k`` of a prompt uses seed ``--seed + k``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sgm.cli import (
    ArgumentParser,
    add_compile_arg,
    add_device_args,
    add_lora_arg,
    check,
    existing_file,
    non_negative_int,
    output_folder,
    positive_float,
    positive_int,
    run,
    setup_logging,
    unit_interval,
)
from sgm.errors import CheckpointError, InputError
from sgm.inference.api import (
    SD_XL_BASE_RATIOS,
    Discretization,
    ModelArchitecture,
    Sampler,
    SamplingParams,
    model_specs,
)

logger = logging.getLogger("simple_image_sample")

VERSIONS = {
    "sd2.1": ModelArchitecture.SD_2_1,
    "sd2.1_768": ModelArchitecture.SD_2_1_768,
    "sdxl_base_0.9": ModelArchitecture.SDXL_V0_9_BASE,
    "sdxl_base_1.0": ModelArchitecture.SDXL_V1_BASE,
    "sdxl_refiner_0.9": ModelArchitecture.SDXL_V0_9_REFINER,
    "sdxl_refiner_1.0": ModelArchitecture.SDXL_V1_REFINER,
    "sdxl_turbo": ModelArchitecture.SDXL_TURBO,
    "sd_turbo": ModelArchitecture.SD_TURBO,
}
REFINERS = {"sdxl_base_0.9": "sdxl_refiner_0.9", "sdxl_base_1.0": "sdxl_refiner_1.0"}
TURBO = ("sdxl_turbo", "sd_turbo")
DEFAULT_PROMPT = "Astronaut in a jungle, cold color palette, muted colors, detailed, 8k"
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
        type=Path,
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
        help="model config (default: the released one in configs/inference)",
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
        help="a text file with one prompt a line (instead of --prompt)",
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
        "--cfg_scale",
        type=positive_float,
        default=5.0,
        help="classifier-free guidance scale (Turbo: none)",
    )
    sampling.add_argument(
        "--seed",
        type=non_negative_int,
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
        choices=["auto", "sdxl_refiner_0.9", "sdxl_refiner_1.0"],
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
    out.add_argument("--verbose", action="store_true")
    return parser


@dataclass
class Model:
    """Where one model comes from (config and checkpoint) and its sampling spec."""

    version: str
    config: Path
    ckpt: Path
    spec: Any
    is_turbo: bool = False


@dataclass
class Job:
    """Everything checked: what to sample and where the results go."""

    base: Model
    prompts: list[str]
    width: int
    height: int
    params: SamplingParams
    output: Path
    refiner: Model | None = None
    init_image: Any = None
    meta: dict[str, str] = field(default_factory=dict)


def _released_config(name: str) -> Path:
    from sgm.util import get_configs_path

    return Path(get_configs_path(), "inference", name)


def _model(version: str, ckpt: Path | None, config: Path | None, folder: Path) -> Model:
    """The config and checkpoint of ``version``; a missing checkpoint is an error here."""
    from omegaconf import OmegaConf

    from sgm.errors import ConfigError
    from sgm.inference.api import infer_spec

    spec = model_specs[VERSIONS[version]]
    config = config or _released_config(spec.config)
    if ckpt is None:
        ckpt = folder / spec.ckpt
        if not ckpt.is_file():
            raise CheckpointError(
                f"{version}: checkpoint {spec.ckpt} not found in {folder} (put it there, or "
                "pass --checkpoints / --ckpt)"
            )
    try:
        factor = infer_spec(OmegaConf.load(config), ckpt).factor
    except Exception as error:  # a config that does not describe an image model
        raise ConfigError(f"{config}: not an image model config ({error})") from None
    spec = replace(spec, factor=factor, ckpt=str(ckpt), config=str(config))
    return Model(version, Path(config), Path(ckpt), spec, version in TURBO)


def _prompts(args: argparse.Namespace) -> list[str]:
    if args.prompts_file is None:
        return [DEFAULT_PROMPT if args.prompt is None else args.prompt]
    check(args.prompt is None, "give --prompt or --prompts_file, not both")
    try:
        lines = args.prompts_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"prompts file {args.prompts_file}: cannot read it ({error})") from None
    prompts = [line.strip() for line in lines if line.strip()]
    check(bool(prompts), f"prompts file {args.prompts_file} holds no prompt")
    return prompts


def _init_image(path: Path) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise InputError(f"init image {path}: not a readable image ({error})") from None


def _size(args: argparse.Namespace, model: Model, image: Any) -> tuple[int, int]:
    """(width, height): given, else the init image's (cut down), else the model's."""
    multiple = 8 * model.spec.factor
    unit = "pixels" if model.spec.factor > 1 else "(latent pixels)"
    for name in ("width", "height"):
        value = getattr(args, name)
        check(
            value is None or value % multiple == 0,
            f"--{name} {value} is not a multiple of {multiple} {unit}",
        )
    width, height = args.width, args.height
    if image is not None:
        w, h = image.size
        width = width or max(w - w % multiple, 0)
        height = height or max(h - h % multiple, 0)
        check(
            width > 0 and height > 0,
            f"init image {args.init_image} ({w}x{h}) is smaller than {multiple} pixels",
        )
    return width or model.spec.width, height or model.spec.height


def validate(args: argparse.Namespace) -> Job:
    """Check every input before any model is built; raises InputError / CheckpointError."""
    turbo = args.version in TURBO
    steps = args.steps or (1 if turbo else 50)
    if turbo:
        check(steps <= 4, f"--steps {steps}: {args.version} samples in 1 to 4 steps")
        check(args.init_image is None, f"--init_image: {args.version} does text-to-image only")
    check(
        args.refiner is None or args.version in REFINERS,
        f"--refiner: only the SDXL base models ({', '.join(REFINERS)}) hand off to a refiner",
    )
    check(
        args.refiner is None or args.init_image is None,
        "--refiner works with text-to-image only (leave out --init_image)",
    )
    prompts = _prompts(args)
    image = None if args.init_image is None else _init_image(args.init_image)
    base = _model(args.version, args.ckpt, args.config, args.checkpoints)
    refiner = None
    if args.refiner is not None:
        name = REFINERS[args.version] if args.refiner == "auto" else args.refiner
        refiner = _model(name, args.refiner_ckpt, args.refiner_config, args.checkpoints)
    width, height = _size(args, base, image)
    if refiner is not None and int(args.refiner_strength * (steps + 1)) < 2:
        logger.warning(
            "--refiner_strength %s of %d steps leaves the refiner no step; raise "
            "--steps or --refiner_strength",
            args.refiner_strength,
            steps,
        )
    if args.negative_prompt and not base.spec.is_legacy:
        logger.warning(
            "--negative_prompt is ignored by %s (%s)",
            args.version,
            "no guidance" if turbo else "its negative text embedding is zero",
        )
    params = SamplingParams(
        width=width,
        height=height,
        steps=steps,
        sampler=Sampler(args.sampler),
        discretization=Discretization(args.discretization),
        scale=args.cfg_scale,
        img2img_strength=args.strength if image is not None else 1.0,
        orig_width=width,
        orig_height=height,
    )
    if image is not None and image.size != (width, height):
        image = image.resize((width, height))
    output = args.output_folder or Path("outputs", "simple_image_sample", args.version)
    try:
        output_folder(str(output))
    except argparse.ArgumentTypeError as error:
        raise InputError(f"output folder: {error}") from None
    job = Job(base, prompts, width, height, params, output, refiner, image)
    job.meta = _metadata(args, job)
    return job


def _metadata(args: argparse.Namespace, job: Job) -> dict[str, str]:
    meta = {
        "negative_prompt": args.negative_prompt,
        "model": args.version,
        "checkpoint": job.base.ckpt.name,
        "width": job.width,
        "height": job.height,
        "steps": job.params.steps,
        "software": "sgm simple_image_sample",
    }
    if job.base.is_turbo:
        meta["sampler"] = "SubstepSampler (Euler ancestral, no guidance)"
        meta.pop("negative_prompt")
    else:
        meta.update(
            sampler=args.sampler, discretization=args.discretization, cfg_scale=args.cfg_scale
        )
    if job.init_image is not None:
        meta.update(init_image=args.init_image.name, strength=args.strength)
    if job.refiner is not None:
        meta.update(
            refiner=job.refiner.version,
            refiner_checkpoint=job.refiner.ckpt.name,
            refiner_strength=args.refiner_strength,
        )
    if args.lora:
        meta["lora"] = ", ".join(f"{path.name}:{scale}" for path, scale in args.lora)
    return {k: str(v) for k, v in meta.items()}


def _pipeline(model: Model, args: argparse.Namespace, lora: bool) -> Any:
    from sgm.inference.api import SamplingPipeline

    options: dict[str, Any] = {}
    if lora and args.lora:
        options["lora"] = [(path, scale) for path, scale in args.lora]
    return SamplingPipeline(
        config=str(model.config),
        ckpt=model.ckpt,
        spec=model.spec,
        device=args.device,
        dtype=args.dtype,
        offload=args.low_vram,
        compile_model=args.compile,
        **options,
    )


def sample(args: argparse.Namespace) -> list[str]:
    """Validate, load the model(s), sample every prompt and save; returns the paths."""
    from sgm.inference.api import text_to_image_refined
    from sgm.inference.helpers import get_input_image_tensor, perform_save_locally

    job = validate(args)
    base = _pipeline(job.base, args, lora=True)
    refiner = None if job.refiner is None else _pipeline(job.refiner, args, lora=False)
    image = None
    if job.init_image is not None:
        image = get_input_image_tensor(job.init_image, base.device)
    paths = []
    for prompt in job.prompts:
        for k in range(args.num_samples):
            seed = args.seed + k
            if refiner is not None:
                out = text_to_image_refined(
                    base,
                    refiner,
                    job.params,
                    prompt,
                    args.negative_prompt,
                    seed=seed,
                    refiner_strength=args.refiner_strength,
                )
            elif image is not None:
                out = base.image_to_image(
                    job.params, image, prompt, args.negative_prompt, seed=seed
                )
            else:
                out = base.text_to_image(job.params, prompt, args.negative_prompt, seed=seed)
            meta = {"prompt": prompt, "seed": str(seed), **job.meta}
            for path in perform_save_locally(job.output, out, metadata=meta):
                print(path, flush=True)
                paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    return run(lambda: sample(args), prog="simple_image_sample.py")


if __name__ == "__main__":
    sys.exit(main())
