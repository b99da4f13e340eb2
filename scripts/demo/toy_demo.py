"""Train the class-conditional toy model on embedded data on CPU, then sample a grid.

``make demo`` runs this: it trains ``configs/example_training/toy/digits_cond.yaml``
(scikit-learn's 8x8 digits, shipped with the package, no download) for a few minutes
with a progress bar, samples one row per class with classifier-free guidance, scores
the samples with an independent classifier fit on the real digits, and writes the grid
as a PNG (never overwriting), printing its path.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import sgm  # noqa: F401  (must precede pytorch_lightning: installs the torchvision hook)

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "example_training" / "toy" / "digits_cond.yaml"


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(CONFIG), help="training config")
    p.add_argument("--minutes", type=float, default=5.0, help="training time budget")
    p.add_argument("--max-steps", type=int, default=1500, help="training step budget")
    p.add_argument("--per-class", type=int, default=10, help="samples per class (grid row)")
    p.add_argument("--cfg-scale", type=float, default=None, help="guidance scale override")
    p.add_argument("--sample-steps", type=int, default=None, help="sampler steps override")
    p.add_argument("--outdir", default="outputs/toy_demo", help="where the PNG goes")
    p.add_argument("--logdir", default="logs", help="folder of training run folders")
    p.add_argument("--seed", type=int, default=23)
    p.add_argument("--upscale", type=int, default=4, help="pixel size in the PNG")
    p.add_argument("--checkpoint", default=None,
                   help="skip training: sample from this checkpoint of the same config")
    return p.parse_known_args(argv)


def _overrides(args: argparse.Namespace, extra: list[str]) -> list[str]:
    sampler = "model.params.sampler_config.params"
    out = [f"lightning.trainer.max_steps={args.max_steps}"]
    if args.cfg_scale is not None:
        out.append(f"{sampler}.guider_config.params.scale={args.cfg_scale}")
    if args.sample_steps is not None:
        out.append(f"{sampler}.num_steps={args.sample_steps}")
    return out + extra


def _time_limit(minutes: float) -> str:
    seconds = max(int(minutes * 60), 1)
    return f"00:{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def train_or_load(args: argparse.Namespace, extra: list[str]):
    """Build the run from the config; train it, or load ``--checkpoint`` instead."""
    from sgm.training.cli import get_parser
    from sgm.training.run import build, fit_and_test

    opt = get_parser().parse_args([
        "--base", args.config, "--logdir", args.logdir, "-n", "toy_demo", "--no-test",
        "--seed", str(args.seed), "--max_time", _time_limit(args.minutes)])
    built = build(opt, _overrides(args, extra))
    if args.checkpoint:
        built.model.init_from_ckpt(args.checkpoint)
        return built, 0
    print(f"training {Path(args.config).name} for up to {args.minutes:g} min / "
          f"{args.max_steps} steps; run folder {built.paths.logdir}", flush=True)
    return built, fit_and_test(opt, built)


def write_grid(images, per_class: int, upscale: int, path: Path) -> Path:
    """Class-major samples in [-1, 1] as a PNG grid, one row per class."""
    from sgm.training.images import make_grid, save_png, to_uint8

    big = images.repeat_interleave(upscale, -1).repeat_interleave(upscale, -2)
    grid = make_grid((big + 1.0) / 2.0, nrow=per_class, padding=upscale, pad_value=1.0)
    return save_png(to_uint8(grid), path)


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(argv)
    from sgm.errors import SgmError
    from sgm.training.cli import _configure_logging
    from sgm.training.toy_eval import fit_classifier, sample_per_class

    _configure_logging(False)
    try:
        built, code = train_or_load(args, extra)
        if code:
            return code
        model, data = built.model.eval(), built.data
        data.setup("fit")
        shape = tuple(data.train_dataset.images.shape[1:])
        images, labels = sample_per_class(model, len(data.classes), args.per_class, shape,
                                          seed=args.seed)
    except SgmError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    classifier = fit_classifier(data.dataset)
    accuracy = classifier.accuracy(images, labels)
    what = args.checkpoint or f"trained {built.trainer.global_step} steps"
    print(f"{what}: an independent classifier (logistic regression, "
          f"{classifier.real_accuracy:.1%} on held-out real {data.dataset}) labels "
          f"{accuracy:.1%} of the samples as their conditioning class")
    path = write_grid(images, args.per_class, args.upscale,
                      Path(args.outdir) / f"{data.dataset}_cfg_grid.png")
    print(f"one row per class ({', '.join(data.classes)}):")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
