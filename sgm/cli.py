"""What every command line shares: one-line errors, checked argument types, common flags.

A script builds its parser with :class:`ArgumentParser`, checks everything it can while
parsing (the ``*_arg`` types below raise ``argparse.ArgumentTypeError`` with the reason),
then does its work inside :func:`run`, which turns any :class:`~sgm.errors.SgmError` into one
line on stderr (followed by the first lines of its report, if it carries one, e.g. the
per-prefix key counts of a checkpoint that does not match) and exit status 2::

    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--num_steps", type=positive_int, default=25)
    add_device_args(parser)
    args = parser.parse_args(argv)          # a bad or unknown flag exits 2 here, nothing done
    return run(lambda: sample(args))

Nothing here imports torch at module import; :func:`device_arg` does when it is called.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

# the path types live beside; command lines take them from here
from sgm.cli_paths import dangling_symlink as dangling_symlink
from sgm.cli_paths import existing_file as existing_file
from sgm.cli_paths import existing_path as existing_path
from sgm.cli_paths import input_folder as input_folder
from sgm.cli_paths import new_output as new_output
from sgm.cli_paths import output_folder as output_folder
from sgm.cli_paths import refuse_dangling as refuse_dangling
from sgm.errors import InputError, SgmError

DTYPES = ("auto", "fp32", "fp16", "bf16")
# Lines of an error's report (``SgmError.details``) shown under its one-line message.
MAX_DETAIL_LINES = 8


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` to a flag's help, except where it says nothing or repeats
    the help: required flags, flags without a default (None, False, empty), and help
    text that already tells its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            action.required
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or (isinstance(default, (list, tuple)) and not default)
            or "default" in text.lower()
        ):
            return text
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` that reports a bad command line in one line and exits with status 2.

    Unknown or misspelled flags are errors (no prefix guessing), as are missing values.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        """Like argparse's, but a misspelled flag fails before any value is converted
        (so before a ``--device`` check imports torch)."""
        tokens = list(sys.argv[1:] if args is None else args)
        unknown = []
        if any(isinstance(a, argparse._SubParsersAction) for a in self._actions):
            tokens_to_scan: list[str] = []  # flags belong to the sub-command's parser
        else:
            tokens_to_scan = tokens
        for token in tokens_to_scan:
            if token == "--":
                break
            flag = token.split("=", 1)[0]
            if flag.startswith("--") and flag not in self._option_string_actions:
                unknown.append(token)
        if unknown:
            self.error(f"unrecognized arguments: {' '.join(unknown)}")
        return super().parse_args(tokens, namespace)


# --------------------------------------------------------------------------- argument types


# Seeds reach NumPy (``np.random.seed``) and Lightning's ``seed_everything``, which take
# 0 .. 2**32 - 1; torch would take more, but one range holds everywhere.
MAX_SEED = 2**32 - 1
# TCP ports a server can listen on.
MAX_PORT = 65535


def _number(text: str, kind: type) -> Any:
    try:
        value = kind(text)
    except ValueError:
        name = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"{text!r} is not {name}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_int(text: str) -> int:
    """An integer > 0."""
    value = _number(text, int)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be a positive integer")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be 0 or more")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = _number(text, float)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{value} must be a positive number")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    value = _number(text, float)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{value} must be 0 or more")
    return value


def unit_interval(text: str) -> float:
    """A number in (0, 1]."""
    value = _number(text, float)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{value} must be in (0, 1]")
    return value


def fraction(text: str) -> float:
    """A number in [0, 1)."""
    value = _number(text, float)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be in [0, 1)")
    return value


def seed(text: str) -> int:
    """A random seed: an integer in 0 .. 2**32 - 1 (what NumPy and Lightning take)."""
    value = _number(text, int)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{value} is outside the seeds 0 .. 2**32 - 1")
    return value


def port(text: str) -> int:
    """A TCP port: an integer in 1 .. 65535."""
    value = _number(text, int)
    if not 1 <= value <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"{value} is not a port (1 .. {MAX_PORT})")
    return value


def multiple_of(factor: int) -> Callable[[str], int]:
    """A positive integer divisible by ``factor`` (e.g. image sizes: 64)."""

    def parse(text: str) -> int:
        value = positive_int(text)
        if value % factor:
            raise argparse.ArgumentTypeError(f"{value} is not a multiple of {factor}")
        return value

    parse.__name__ = f"multiple of {factor}"
    return parse


def device_arg(text: str) -> str:
    """``auto`` (CUDA, then MPS, then CPU) or a device that exists on this machine."""
    import torch

    from sgm.util import resolve_device

    if text == "auto":
        return resolve_device("auto")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a device (auto, cpu, cuda, cuda:N, mps)"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: no CUDA device on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(
                f"{text}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if not (mps and mps.is_available()):
            raise argparse.ArgumentTypeError(f"{text}: MPS is not available on this machine")
    elif device.type != "cpu":
        raise argparse.ArgumentTypeError(f"{text!r}: use auto, cpu, cuda, cuda:N or mps")
    return str(device)


def float_list(text: str) -> float | list[float]:
    """One number, or a list: ``10``, ``10,20,30`` or ``[10, 20, 30]``."""
    parts = [p for p in text.strip().strip("[]()").split(",") if p.strip()]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or a list of numbers") from None
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r} holds no numbers")
    bad = [p.strip() for p, v in zip(parts, values) if not math.isfinite(v)]
    if bad:
        raise argparse.ArgumentTypeError(f"{bad[0]!r} in {text!r} is not a finite number")
    return values[0] if len(values) == 1 and "," not in text else values


def boolean(text: str) -> bool:
    """``true``/``false`` (also yes/no, 1/0)."""
    lowered = text.lower()
    if lowered in ("true", "yes", "1"):
        return True
    if lowered in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def lora_arg(text: str) -> tuple[Path, float]:
    """``PATH[:SCALE]``: a LoRA adapter file and its strength (a finite number, default
    1.0). A file whose own name holds the colon is taken whole."""
    path, scale = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep and head and not tail.startswith(("/", "\\")) and not Path(text).expanduser().exists():
        try:
            scale = float(tail)
        except ValueError:
            if Path(head).expanduser().is_file():
                raise argparse.ArgumentTypeError(
                    f"{text}: the scale {tail!r} after the file is not a number"
                ) from None
            scale = 1.0
        else:
            if not math.isfinite(scale):
                raise argparse.ArgumentTypeError(f"{text}: the scale must be a finite number")
            path = head
    path = existing_file(path)
    from .checkpoint import check_weights_file
    from .errors import CheckpointError

    try:  # whole, and safe to read (no pickle that runs code), before any model is built
        check_weights_file(path)
    except CheckpointError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return path, scale


# --------------------------------------------------------------------------- common flags


def add_device_args(parser: argparse.ArgumentParser, low_vram: bool = True) -> None:
    """``--device``, ``--dtype`` and (optionally) ``--low_vram``."""
    parser.add_argument(
        "--device", type=device_arg, default="auto", help="auto, cpu, cuda, cuda:N or mps"
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="auto",
        help="compute precision; auto: fp16 on CUDA, bf16 on a CPU that computes it "
        "natively (AMX, AVX-512 BF16), fp32 elsewhere",
    )
    if low_vram:
        parser.add_argument(
            "--low_vram",
            action="store_true",
            help="keep models on the host and move each to the device only while it runs",
        )


def add_compile_arg(parser: argparse.ArgumentParser) -> None:
    """``--compile``: the network and the VAE decoder run through ``torch.compile``
    with their weights frozen in (``sgm.inference.engines.compile_engine``)."""
    parser.add_argument(
        "--compile",
        action="store_true",
        help="compile the network and VAE decoder with torch.compile (slow first run, faster after)",
    )


def add_lora_arg(parser: argparse.ArgumentParser) -> None:
    """``--lora PATH[:SCALE]``, repeatable."""
    parser.add_argument(
        "--lora",
        type=lora_arg,
        action="append",
        default=[],
        metavar="PATH[:SCALE]",
        help="apply a LoRA adapter (repeatable)",
    )


def check(condition: bool, message: str) -> None:
    """Raise ``InputError(message)`` unless ``condition``: for checks across flags."""
    if not condition:
        raise InputError(message)


# --------------------------------------------------------------------------- running


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )


class Terminated(BaseException):
    """SIGTERM arrived (``kill``, SLURM, Kubernetes): raised where the command is, so its
    ``finally`` blocks run (temporary files removed, process groups left) as for Ctrl-C."""


def _raise_terminated(signum: int, frame: Any) -> NoReturn:
    raise Terminated(signum)


def run(work: Callable[[], Any], prog: str | None = None) -> int:
    """Call ``work()``; a library error becomes one line on stderr and exit status 2.

    Ctrl-C returns 130, SIGTERM 143 (both after the work's clean-up ran). Anything else
    is a bug and keeps its traceback.
    """
    import signal
    import threading

    prog = prog or Path(sys.argv[0]).name
    previous = None
    if threading.current_thread() is threading.main_thread():
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        work()
    except Terminated:
        print(f"{prog}: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except SgmError as error:
        message = " ".join(str(error).split("\n")[0].split())
        print(f"error: {prog}: {message}", file=sys.stderr)
        for line in _shown_details(error.details):
            print(f"  {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _shown_details(details: Sequence[str]) -> list[str]:
    """The lines of an error's report a command line shows: the first
    ``MAX_DETAIL_LINES``, then how many more (all of them with ``--verbose``)."""
    if len(details) <= MAX_DETAIL_LINES or logging.getLogger().isEnabledFor(logging.DEBUG):
        return list(details)
    more = len(details) - MAX_DETAIL_LINES
    return [*details[:MAX_DETAIL_LINES], f"... {more} more (--verbose shows all)"]


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser.parse_args(argv)`` (``argv=None`` reads ``sys.argv``)."""
    return parser.parse_args(None if argv is None else list(argv))
