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

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "example_training" / "toy" / "digits_cond.yaml"


def get_parser() -> argparse.ArgumentParser:
    """The command line; every value is checked while parsing."""
    from sgm import cli

    p = cli.ArgumentParser(prog="toy_demo.py", description=__doc__.splitlines()[0])
    p.add_argument("--config", type=cli.existing_file, default=str(CONFIG), help="training config")
    p.add_argument("--minutes", type=_minutes, default=5.0, help="training time budget")
    p.add_argument("--max-steps", type=cli.positive_int, default=1500, help="training step budget")
    p.add_argument(
        "--per-class", type=cli.positive_int, default=10, help="samples per class (grid row)"
    )
    p.add_argument(
        "--cfg-scale", type=cli.non_negative_float, default=None, help="guidance scale override"
    )
    p.add_argument(
        "--sample-steps", type=cli.positive_int, default=None, help="sampler steps override"
    )
    p.add_argument(
        "--outdir", type=cli.output_folder, default="outputs/toy_demo", help="where the PNG goes"
    )
    p.add_argument(
        "--logdir", type=cli.output_folder, default="logs", help="folder of training run folders"
    )
    p.add_argument("--seed", type=cli.seed, default=23, help="random seed")
    p.add_argument("--upscale", type=cli.positive_int, default=4, help="pixel size in the PNG")
    p.add_argument(
        "--checkpoint",
        type=cli.existing_file,
        default=None,
        help="skip training: sample from this checkpoint of the same config",
    )
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, as for main.py"
    )
    return p


MAX_MINUTES = 60 * 24 * 365  # a year: Lightning's max_time takes DD:HH:MM:SS


def _minutes(text: str) -> float:
    """A training time budget in minutes: > 0, at most a year."""
    from sgm import cli

    value = cli.positive_float(text)
    if value > MAX_MINUTES:
        raise argparse.ArgumentTypeError(f"{value:g} is more than a year ({MAX_MINUTES} minutes)")
    return value


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """The checked flags and the ``key=value`` overrides."""
    from sgm import cli

    args = cli.parse(get_parser(), argv)
    return args, list(args.overrides)


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
    days, hours = seconds // 86400, seconds % 86400 // 3600
    return f"{days:02d}:{hours:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def train_or_load(args: argparse.Namespace, extra: list[str]):
    """Build the run from the config; train it, or load ``--checkpoint`` instead."""
    from sgm.training.cli import get_parser
    from sgm.training.run import build, fit_or_clean_up

    opt = get_parser().parse_args(
        [
            "--base",
            str(args.config),
            "--logdir",
            str(args.logdir),
            "-n",
            "toy_demo",
            "--no-test",
            "--seed",
            str(args.seed),
            "--max_time",
            _time_limit(args.minutes),
        ]
    )
    built = build(opt, _overrides(args, extra))
    if args.checkpoint:
        built.model.init_from_ckpt(args.checkpoint)
        return built, 0
    print(
        f"training {Path(args.config).name} for up to {args.minutes:g} min / "
        f"{args.max_steps} steps; run folder {built.paths.logdir}",
        flush=True,
    )
    return built, fit_or_clean_up(opt, built)


def write_grid(images, per_class: int, upscale: int, path: Path) -> Path:
    """Class-major samples in [-1, 1] as a PNG grid, one row per class."""
    from sgm.training.images import make_grid, save_png, to_uint8

    big = images.repeat_interleave(upscale, -1).repeat_interleave(upscale, -2)
    grid = make_grid((big + 1.0) / 2.0, nrow=per_class, padding=upscale, pad_value=1.0)
    return save_png(to_uint8(grid), path)


def main(argv: list[str] | None = None) -> int:
    """Train (or load), sample a grid, score it; bad input: one line, exit code 2."""
    from sgm import cli
    from sgm.training.cli import _configure_logging

    args, extra = parse_args(argv)
    _configure_logging(False)
    status = {"code": 0}

    def work() -> None:
        status["code"] = demo(args, extra)

    code = cli.run(work, prog="toy_demo.py")
    return code or status["code"]


def demo(args: argparse.Namespace, extra: list[str]) -> int:
    """Everything after parsing; the exit code of training (0 when it finished)."""
    from sgm.training.cli import split_overrides

    extra = split_overrides(argparse.Namespace(base=[]), extra)
    if args.checkpoint:
        from sgm.checkpoint import load_state_dict

        load_state_dict(args.checkpoint)  # a corrupt or refused file fails before building
    from sgm.training.toy_eval import fit_classifier, sample_per_class

    built, code = train_or_load(args, extra)
    if code:
        return code
    model, data = built.model.eval(), built.data
    data.setup("fit")
    shape = tuple(data.train_dataset.images.shape[1:])
    images, labels = sample_per_class(
        model, len(data.classes), args.per_class, shape, seed=args.seed
    )
    classifier = fit_classifier(data.dataset)
    accuracy = classifier.accuracy(images, labels)
    what = args.checkpoint or f"trained {built.trainer.global_step} steps"
    print(
        f"{what}: an independent classifier (logistic regression, "
        f"{classifier.real_accuracy:.1%} on held-out real {data.dataset}) labels "
        f"{accuracy:.1%} of the samples as their conditioning class"
    )
    path = write_grid(
        images, args.per_class, args.upscale, Path(args.outdir) / f"{data.dataset}_cfg_grid.png"
    )
    print(f"one row per class ({', '.join(data.classes)}):")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
