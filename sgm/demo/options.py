"""Where a demo page finds its models, and the message shown when a checkpoint is missing.

Pages take the same options from their command line (``streamlit run page.py -- --flag``,
``python gradio_app.py --flag``) or from environment variables, so a page can run a
small local model (tests, laptops):

==================  ======================  ==============================================
flag                environment variable    meaning
==================  ======================  ==============================================
``--checkpoints``   ``SGM_DEMO_CHECKPOINTS`` folder of checkpoints under released names
``--configs``       ``SGM_DEMO_CONFIGS``     folder whose files replace released configs
                                             of the same name
``--config``        ``SGM_DEMO_CONFIG``      config of the model selected in the page
``--ckpt``          ``SGM_DEMO_CKPT``        checkpoint of the model selected in the page
``--device``        ``SGM_DEMO_DEVICE``      auto, cpu, cuda, cuda:N or mps
``--outputs``       ``SGM_DEMO_OUTPUTS``     where saved samples go (``outputs/demo``)
==================  ======================  ==============================================

Nothing is downloaded: a missing file is reported by :func:`missing_checkpoint`, and the
pages then show :data:`TINY_MODEL_HINT`: without the released weights, a page runs on tiny
random-weight models written by ``sgm-tiny --release all --out tiny`` with
``--checkpoints tiny --configs tiny/configs``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InputError

ENV = {
    "checkpoints": "SGM_DEMO_CHECKPOINTS",
    "configs": "SGM_DEMO_CONFIGS",
    "config": "SGM_DEMO_CONFIG",
    "ckpt": "SGM_DEMO_CKPT",
    "device": "SGM_DEMO_DEVICE",
    "outputs": "SGM_DEMO_OUTPUTS",
}


@dataclass(frozen=True)
class DemoOptions:
    """Model and output locations of a demo page."""

    checkpoints: Path = Path("checkpoints")
    configs: Path | None = None
    config: Path | None = None
    ckpt: Path | None = None
    device: str = "auto"
    outputs: Path = Path("outputs/demo")


@dataclass(frozen=True)
class ModelFiles:
    """A model's config and checkpoint files, and the flag/variable that moves them."""

    label: str
    config: Path
    ckpt: Path
    ckpt_overridden: bool = False


def _path(text: str) -> Path:
    """A path flag's value; an empty one is refused (it would mean the current folder)."""
    import argparse

    if not text.strip():
        raise argparse.ArgumentTypeError("the path is empty")
    return Path(text)


def _parser(prog: str) -> Any:
    from ..cli import ArgumentParser

    class PageParser(ArgumentParser):
        def error(self, message: str):  # a page shows the message instead of exiting
            raise InputError(f"{prog}: {message}")

    parser = PageParser(prog=prog, description="sgm demo page")
    parser.add_argument("--checkpoints", type=_path, help=f"env {ENV['checkpoints']}")
    parser.add_argument("--configs", type=_path, help=f"env {ENV['configs']}")
    parser.add_argument("--config", type=_path, help=f"env {ENV['config']}")
    parser.add_argument("--ckpt", type=_path, help=f"env {ENV['ckpt']}")
    parser.add_argument("--device", help=f"env {ENV['device']}")
    parser.add_argument("--outputs", type=_path, help=f"env {ENV['outputs']}")
    return parser


def add_page_arguments(parser: Any) -> None:
    """Add the model-location flags (for pages with their own parser, e.g. Gradio)."""
    for action in _parser("page")._actions:
        if action.dest != "help":
            parser._add_action(action)


def script_argv(script: str | os.PathLike) -> list[str]:
    """The page's own arguments: ``sys.argv[1:]`` when ``sys.argv[0]`` is ``script``
    (``streamlit run script -- ...``), else none (a test runner's argv is not the page's)."""
    try:
        same = Path(sys.argv[0]).resolve() == Path(script).resolve()
    except (OSError, IndexError):
        same = False
    return list(sys.argv[1:]) if same else []


def demo_options(
    argv: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
    prog: str = "page",
    parsed: Any = None,
    strict: bool = False,
) -> DemoOptions:
    """Options from ``argv`` (or an already ``parsed`` namespace), then the environment,
    then the defaults; a bad flag raises ``InputError``. The outputs folder may not be (or
    lie below) a file. ``strict`` (a server started from a command line) also refuses a
    ``--ckpt`` that does not exist and a ``--checkpoints`` folder that does not exist,
    where a page would show the missing-checkpoint message instead."""
    environ = os.environ if environ is None else environ
    args = parsed if parsed is not None else _parser(prog).parse_args(list(argv))
    values: dict[str, Any] = {}
    for name, variable in ENV.items():
        value = getattr(args, name, None)
        if value is None and environ.get(variable):
            value = environ[variable]
        if value is not None and name != "device" and not str(value).strip():
            raise InputError(f"{name}: the path is empty (set by --{name} / {variable})")
        if value is not None:
            values[name] = value if name == "device" else Path(value)
    if "device" in values:
        values["device"] = _device(values["device"])
    options = DemoOptions(**values)
    for name in ("checkpoints", "configs"):
        folder = getattr(options, name)
        if folder is not None and folder.exists() and not folder.is_dir():
            raise InputError(f"{name} folder {folder} is a file")
    if options.configs is not None and not any(options.configs.glob("*.yaml")):
        # a missing or empty --configs folder would silently mean the released configs
        what = "holds no .yaml config" if options.configs.is_dir() else "does not exist"
        raise ConfigError(f"configs folder {options.configs} {what} (set by --configs)")
    if options.config is not None and not options.config.is_file():
        raise ConfigError(f"model config not found: {options.config}")
    _check_outputs(options.outputs)
    if strict and options.ckpt is not None and not options.ckpt.is_file():
        raise InputError(f"checkpoint not found: {options.ckpt} (set by --ckpt / {ENV['ckpt']})")
    if strict and "checkpoints" in values and not options.checkpoints.is_dir():
        raise InputError(f"checkpoints folder not found: {options.checkpoints}")
    if strict:
        _check_files(options, "checkpoints" in values)
    return options


def _check_files(options: DemoOptions, folder: bool) -> None:
    """A server's files are whole and safe to read before it starts: the config is text,
    and the checkpoint (or every weights file in ``--checkpoints``) is neither truncated
    nor a pickle that would run code."""
    from ..checkpoint import check_weights_file
    from ..config import check_text_file

    if options.config is not None:
        check_text_file(options.config)
    if options.ckpt is not None:
        check_weights_file(options.ckpt)
    if folder:
        for path in sorted(options.checkpoints.iterdir()):
            if path.is_file():
                check_weights_file(path)


def _check_outputs(folder: Path) -> None:
    import argparse

    from ..cli import output_folder

    try:
        output_folder(str(folder))
    except argparse.ArgumentTypeError as error:
        raise InputError(f"outputs: {error}") from None


def _device(text: str) -> str:
    """``text`` if it names a device this machine has (``sgm.cli.device_arg``)."""
    import argparse

    from ..cli import device_arg

    try:
        return device_arg(str(text))
    except argparse.ArgumentTypeError as error:
        raise InputError(f"device: {error}") from None


def model_files(
    label: str,
    config_name: str,
    ckpt_name: str,
    config_dir: str | os.PathLike,
    options: DemoOptions,
    selected: bool = True,
) -> ModelFiles:
    """The config and checkpoint of one model: ``--config`` / ``--ckpt`` for the
    ``selected`` model, else the ``--configs`` folder's file of that name, else the
    released config; the checkpoint under its released name in ``--checkpoints``."""
    config = Path(config_dir, config_name)
    if options.configs is not None and (options.configs / config_name).is_file():
        config = options.configs / config_name
    ckpt = options.checkpoints / ckpt_name
    overridden = False
    if selected and options.config is not None:
        config = options.config
    if selected and options.ckpt is not None:
        ckpt, overridden = options.ckpt, True
    if not config.is_file():
        raise ConfigError(f"{label}: model config not found: {config}")
    return ModelFiles(label, config, ckpt, overridden)


TINY_MODEL_HINT = (
    "No weights at hand? Try the page with tiny random-weight models (noise pictures, "
    "real plumbing): `sgm-tiny --release all --out tiny`, then start the page with "
    "`-- --checkpoints tiny --configs tiny/configs` (or set "
    f"{ENV['checkpoints']}=tiny {ENV['configs']}=tiny/configs)."
)


def missing_checkpoint(files: ModelFiles) -> str | None:
    """One line naming the missing checkpoint and where to put it; None if it exists."""
    if files.ckpt.is_file():
        return None
    if files.ckpt_overridden:
        return (
            f"{files.label}: checkpoint {files.ckpt} not found (set by --ckpt / "
            f"{ENV['ckpt']}). Nothing is downloaded."
        )
    return (
        f"{files.label}: checkpoint {files.ckpt.name} not found. Put it at "
        f"{files.ckpt.absolute()} "
        f"(folder set by --checkpoints / {ENV['checkpoints']}); nothing is downloaded."
    )
