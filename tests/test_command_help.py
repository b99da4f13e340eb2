"""Every command line's --help: each option has a help string, a required flag shows no
default, no help line shows its default twice (or "None"), and the --help of every
command runs."""

from __future__ import annotations

import argparse
import importlib
import pkgutil

import pytest

import sgm.commands

BUILDERS = ("build_parser", "get_parser")


def _command_modules() -> list[str]:
    """Every module of sgm.commands that has a main()."""
    found = []
    for info in pkgutil.iter_modules(sgm.commands.__path__):
        module = importlib.import_module(f"sgm.commands.{info.name}")
        if hasattr(module, "main"):
            found.append(info.name)
    return found


COMMANDS = _command_modules()


def _parsers(parser: argparse.ArgumentParser, name: str):
    """(name, parser) of the parser and of its sub-commands."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, subparser in action.choices.items():
                yield from _parsers(subparser, f"{name} {sub}")


def _shown_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help text --help prints for ``action``, defaults expanded, on one line."""
    return " ".join(parser._get_formatter()._expand_help(action).split())


def test_every_command_is_walked():
    expected = {"sample_image", "sample_video", "sample_4d", "sample_4d2", "convert"}
    expected |= {"detect", "pack_shards", "train", "lora", "cache_conditioning", "tiny"}
    assert expected <= set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_help_of_every_option(name, capsys):
    module = importlib.import_module(f"sgm.commands.{name}")
    builder = next((getattr(module, b) for b in BUILDERS if hasattr(module, b)), None)
    assert builder is not None, f"sgm.commands.{name} has no build_parser()/get_parser()"
    problems = []
    for where, parser in _parsers(builder(), name):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            flag = "/".join(action.option_strings) or action.dest
            if action.help is argparse.SUPPRESS:  # an alias hidden from --help
                continue
            if not (action.help or "").strip():
                problems.append(f"{where} {flag}: no help")
                continue
            shown = _shown_help(parser, action)
            if action.required and "(default:" in shown:
                problems.append(f"{where} {flag}: required, yet shows {shown!r}")
            if "(default: None)" in shown:
                problems.append(f"{where} {flag}: {shown!r}")
            if shown.lower().count("default") > 1 and "(default:" in shown:
                problems.append(f"{where} {flag}: default shown twice: {shown!r}")
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(["--help"])
        assert exit_info.value.code == 0
        assert capsys.readouterr().out.startswith("usage:")
    assert not problems, "\n".join(problems)


DEFAULT_INPUTS = {
    "sample_video": "assets/test_image.png",
    "sample_4d": "assets/sv4d_videos/test_video1.mp4",
    "sample_4d2": "assets/sv4d_videos/camel.gif",
}


@pytest.mark.parametrize("name", sorted(DEFAULT_INPUTS))
@pytest.mark.parametrize("where", ["checkout", "elsewhere"])
def test_default_inputs_exist_in_the_checkout_and_outside_it(
    name, where, tmp_path, monkeypatch, capsys
):
    """The video command lines' default --input_path is a real, readable example: the
    original's relative path from the repository root, the packaged copy elsewhere."""
    from pathlib import Path

    import numpy as np

    from sgm.inference.video_io import read_frames

    repo = Path(sgm.commands.__file__).resolve().parents[2]
    monkeypatch.chdir(repo if where == "checkout" else tmp_path)
    module = importlib.import_module(f"sgm.commands.{name}")
    default = module.get_parser().parse_args([]).input_path
    path = Path(default)
    if where == "checkout":
        assert str(default) == DEFAULT_INPUTS[name]
    else:
        assert path.is_absolute() and path.parts[-2:] == Path(DEFAULT_INPUTS[name]).parts[-2:]
    assert path.is_file() and path.stat().st_size < 20_000
    if name == "sample_video":
        from PIL import Image

        with Image.open(path) as image:
            assert image.size == (256, 192) and image.size[0] % 64 == image.size[1] % 64 == 0
    else:
        frames = read_frames(path, 100)
        assert len(frames) == 21 and frames[0].size == (128, 128)
        first, last = (np.asarray(f.convert("RGB"), dtype=float) for f in (frames[0], frames[-1]))
        assert np.abs(first - last).mean() > 5  # the shape moves
