"""The ``main.py`` command line: configs, run folder, trainer, fit, resume."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from .. import config_trainer as trainer_args
from ..cli import ArgumentParser, existing_file, output_folder, seed
from ..errors import ConfigError, SgmError
from .paths import RUN_ENV as RUN_ENV
from .paths import RunPaths as RunPaths
from .paths import exit_code_for as exit_code_for
from .paths import resolve_paths as resolve_paths

logger = logging.getLogger("sgm.main")


def str2bool(value: Any) -> bool:
    """Parse yes/no/true/false/1/0 (argparse type)."""
    if isinstance(value, bool):
        return value
    lowered = str(value).lower()
    if lowered in ("yes", "true", "t", "y", "1"):
        return True
    if lowered in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"boolean value expected, got {value!r}")


def _flag(parser: argparse.ArgumentParser, *names: str, default: bool, help: str) -> None:
    parser.add_argument(*names, type=str2bool, nargs="?", const=True, default=default, help=help)


def get_parser() -> argparse.ArgumentParser:
    """The command-line parser (the original flags, plus one ``--<name>`` per Trainer arg).

    Building and using it imports neither torch nor Lightning.
    """
    p = ArgumentParser(
        prog="main.py",
        description="Train a model from YAML configs; extra key=value arguments override "
        "config entries (e.g. model.params.use_ema=true).",
    )
    p.add_argument("-n", "--name", default="", help="postfix for the run folder name")
    _flag(p, "--no_date", default=False, help="leave the date out of the run folder name")
    p.add_argument("-r", "--resume", default="", help="run folder or checkpoint to resume")
    p.add_argument(
        "-b",
        "--base",
        nargs="*",
        metavar="base_config.yaml",
        default=[],
        help="configs merged left to right, then the key=value overrides",
    )
    _flag(p, "-t", "--train", default=True, help="train")
    _flag(p, "--no-test", default=False, help="skip testing after training")
    p.add_argument("-p", "--project", help="name of a new or path to an existing project")
    _flag(p, "-d", "--debug", default=False, help="post-mortem debugging, offline wandb")
    p.add_argument("-s", "--seed", type=seed, default=23, help="seed for seed_everything")
    p.add_argument("-f", "--postfix", default="", help="postfix for the default name")
    p.add_argument("--projectname", default="stablediffusion", help="wandb project")
    p.add_argument(
        "-l", "--logdir", type=output_folder, default="logs", help="folder of run folders"
    )
    _flag(
        p,
        "--scale_lr",
        default=False,
        help="lr = accumulate_grad_batches * devices * num_nodes * batch_size * base lr",
    )
    _flag(p, "--legacy_naming", default=False, help="name runs after the config file only")
    _flag(p, "--enable_tf32", default=False, help="allow TF32 matmuls on Ampere+ GPUs")
    p.add_argument("--startup", type=str, default=None, help="start time (for run naming)")
    _flag(p, "--wandb", default=False, help="log to Weights & Biases")
    _flag(p, "--no_base_name", default=False, help="leave the config name out of the run name")
    p.add_argument(
        "--resume_from_checkpoint",
        type=existing_file,
        default=None,
        help="checkpoint whose full training state to resume from",
    )
    _add_trainer_args(p)
    return p


def _yaml_value(text: str) -> Any:
    from ..config_overrides import parse_override

    try:
        return parse_override(f"value={text}")[1]
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _trainer_type(name: str):
    def parse(text: str) -> Any:
        value = _yaml_value(text)
        try:
            value = trainer_args.check_value(name, value)
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"{text!r}: {error}") from None
        if name == "accelerator" and not trainer_args.accelerator_available(value):
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has no such device")
        return value

    parse.__name__ = name
    return parse


def _add_trainer_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Trainer", "pytorch_lightning.Trainer arguments")
    taken = {a.dest for a in parser._actions}
    for name in trainer_args.CHECKS:
        if name in taken:
            continue
        group.add_argument(
            f"--{name}",
            dest=f"trainer__{name}",
            type=_trainer_type(name),
            default=argparse.SUPPRESS,
            metavar="VALUE",
            help=f"Trainer({name}=VALUE); replaces the config's lightning.trainer.{name}",
        )


def split_overrides(opt: argparse.Namespace, unknown: list[str]) -> list[str]:
    """The ``key=value`` overrides among the unparsed arguments; anything else is an error.

    Overrides swallowed by ``--base`` (``--base a.yaml key=value``) are moved out of it.
    """
    base = []
    moved = []
    for entry in opt.base:
        if os.path.exists(entry) or entry.lower().endswith((".yaml", ".yml")):
            base.append(entry)
        else:
            moved.append(entry)
    opt.base = base
    overrides = moved + list(unknown)
    for entry in overrides:
        if "=" not in entry:
            hint = f" (write {entry}=VALUE, without a space)" if "." in entry else ""
            raise ConfigError(
                f"argument {entry!r} is neither a config file nor a key=value override{hint}"
            )
    return overrides


def _configure_logging(debug: bool) -> None:
    level = logging.DEBUG if debug else logging.INFO
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("sgm").setLevel(level)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, check everything, build and train; returns the process exit code.

    Bad input (flags, configs, overrides, checkpoints, devices) ends with one line on
    stderr and exit code 2, before any folder is created.
    """
    parser = get_parser()
    opt, unknown = parser.parse_known_args(argv)
    flags = [u for u in unknown if u.startswith("-")]
    if flags:
        parser.error(f"unrecognized arguments: {' '.join(flags)}")
    _configure_logging(opt.debug)
    try:
        overrides = split_overrides(opt, unknown)
        from .run import run

        return run(opt, overrides)
    except SgmError as error:
        return _report(error)
    except Exception as error:
        if _is_lightning_config_error(error):
            return _report(error)
        if opt.debug and sys.stdin.isatty():
            import pdb

            pdb.post_mortem(sys.exc_info()[2])
        raise


def _report(error: BaseException) -> int:
    lines = str(error).strip().splitlines() or [type(error).__name__]
    print(f"error: main.py: {' '.join(lines[0].split())}", file=sys.stderr)
    for line in lines[1:]:
        logger.error("%s", line)
    return 2


def _is_lightning_config_error(error: BaseException) -> bool:
    """Lightning's "misconfigured" errors are bad input, not bugs."""
    return type(error).__name__ == "MisconfigurationException"
