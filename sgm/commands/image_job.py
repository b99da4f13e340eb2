"""The image command line's work: every flag checked against the release registry
(``sgm.inference.releases``) before a model loads, then sampling and the PNG files."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..cli import MAX_SEED, check, output_folder
from ..errors import CheckpointError, InputError
from ..inference.releases import config_path, get_release, releases
from ..inference.sampling_params import (
    Discretization,
    Guider,
    Sampler,
    SamplingParams,
    TimestepSpacing,
)
from ..inference.specs import model_specs
from .speedups import params_fields

logger = logging.getLogger("simple_image_sample")

VERSIONS = {r.name: r.architecture for r in releases("image")}
REFINERS = {r.name: r.refiner for r in releases("image") if r.refiner}
TURBO = tuple(r.name for r in releases("image") if r.is_turbo)
DEFAULT_PROMPT = "Astronaut in a jungle, cold color palette, muted colors, detailed, 8k"


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
    entries: list[Any] = field(default_factory=list)  # the prompts file's lines (Prompt)


def _model(version: str, ckpt: Path | None, config: Path | None, folder: Path) -> Model:
    """The config and checkpoint of ``version``; a missing checkpoint is an error here."""
    from ..checkpoint_files import check_local_encoders, check_weights_file
    from ..config import load_yaml
    from ..errors import ConfigError
    from ..inference.specs import infer_spec

    spec = model_specs[VERSIONS[version]]
    config = config or config_path(version)
    if ckpt is None:
        ckpt = folder / spec.ckpt
        if not ckpt.is_file():
            raise CheckpointError(
                f"{version}: checkpoint {spec.ckpt} not found in {folder} (put it there, or "
                "pass --checkpoints / --ckpt)"
            )
    tree = load_yaml(config)  # UTF-8 text and YAML, or ConfigError naming it
    check_weights_file(ckpt)  # whole (a --checkpoints folder's file too), before any build
    check_local_encoders(tree)  # the encoders' own weights (a tiny model's clip_text/)
    try:
        factor = infer_spec(tree, ckpt).factor
    except Exception as error:  # a config that does not describe an image model
        raise ConfigError(f"{config}: not an image model config ({error})") from None
    spec = replace(spec, factor=factor, ckpt=str(ckpt), config=str(config))
    return Model(version, Path(config), Path(ckpt), spec, version in TURBO)


def _prompts(args: argparse.Namespace) -> list[Any]:
    """The prompts (``work_items.Prompt``): ``--prompt``, or every line of the file."""
    from ..inference.work_items import Prompt, read_prompts_file

    if args.prompts_file is None:
        return [Prompt(DEFAULT_PROMPT if args.prompt is None else args.prompt)]
    check(args.prompt is None, "give --prompt or --prompts_file, not both")
    return read_prompts_file(args.prompts_file)


def _check_seeds(args: argparse.Namespace, entries: list[Any], extra: int) -> None:
    """Every image's seed is one the backend takes: ``--seed`` + its index (image ``k`` of
    the only prompt, or item ``k`` of the prompts file), or its line's own seed + its
    sample; ``extra``: the seeds after its own an image draws from (Turbo: one a step).
    The run is refused up front, naming the last seed it would need."""
    from ..inference.work_items import prompt_items
    from .at_scale import check_seeds

    n = args.num_samples
    for number, entry in enumerate(entries, start=1):
        last = (entry.seed or 0) + n - 1 + extra
        check(
            entry.seed is None or last <= MAX_SEED,
            f"prompt {number} ({entry.prompt[:40]!r}): its 'seed' {entry.seed} over "
            f"--num_samples {n} needs seeds up to {last}, past the last seed {MAX_SEED} "
            "(2**32 - 1)",
        )
    items = prompt_items(entries, n, args.seed)
    counted = [item for item in items if entries[item.index // n].seed is None]
    if counted:
        check_seeds(counted, args.seed, "image", extra)


def _init_image(path: Path) -> Any:
    from ..image_files import read_image  # the header's size is checked before decoding

    return read_image(path, f"init image {path}").convert("RGB")


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
    steps = args.steps or get_release(args.version).num_steps
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
    entries = _prompts(args)
    _check_seeds(args, entries, steps if turbo else 0)
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
    check(
        not (turbo and (args.deepcache or args.tome or args.tgate)),
        f"--deepcache / --tome / --tgate: {args.version} samples in 1 to 4 steps, "
        "with nothing to reuse or merge",
    )
    check(not (args.deepcache and args.tgate), "--deepcache and --tgate cannot be combined")
    check(
        not args.tgate or args.tgate <= steps,
        f"--tgate {args.tgate} is beyond the {steps} sampling steps",
    )
    params = SamplingParams(
        width=width,
        height=height,
        steps=steps,
        sampler=Sampler(args.sampler),
        discretization=Discretization(args.discretization),
        scale=args.cfg_scale,
        guider=Guider.IDENTITY if args.sampler == Sampler.LCM.value else Guider.VANILLA,
        timestep_spacing=TimestepSpacing(args.timestep_spacing),
        img2img_strength=args.strength if image is not None else 1.0,
        orig_width=width,
        orig_height=height,
        **params_fields(args),
    )
    if image is not None and image.size != (width, height):
        image = image.resize((width, height))
    output = args.output_folder or Path("outputs", "simple_image_sample", args.version)
    try:
        output_folder(str(output))
    except argparse.ArgumentTypeError as error:
        raise InputError(f"output folder: {error}") from None
    prompts = [entry.prompt for entry in entries]
    job = Job(base, prompts, width, height, params, output, refiner, image, entries=entries)
    job.meta = _metadata(args, job)
    return job


def _metadata(args: argparse.Namespace, job: Job) -> dict[str, str]:
    meta = {
        "negative_prompt": args.negative_prompt,
        "model": args.version,
        "config": job.base.config,  # the files used, whatever --config / --ckpt named
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
            refiner_config=job.refiner.config,
            refiner_checkpoint=job.refiner.ckpt.name,
            refiner_strength=args.refiner_strength,
        )
    if args.lora:
        meta["lora"] = ", ".join(f"{path.name}:{scale}" for path, scale in args.lora)
    return {k: str(v) for k, v in meta.items()}


def _pipeline(model: Model, args: argparse.Namespace, lora: bool, device: Any = None) -> Any:
    from ..inference.api import SamplingPipeline

    options: dict[str, Any] = {}
    if lora and args.lora:
        options["lora"] = [(path, scale) for path, scale in args.lora]
    return SamplingPipeline(
        config=str(model.config),
        ckpt=model.ckpt,
        spec=model.spec,
        device=args.device if device is None else device,
        dtype=args.dtype,
        offload=args.low_vram,
        compile_model=args.compile,
        **options,
    )


def sample(args: argparse.Namespace) -> list[str]:
    """Validate, load the model(s), sample every prompt and save; returns the paths."""
    from ..inference.api import text_to_image_refined
    from ..inference.helpers import get_input_image_tensor, perform_save_locally

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
