"""Where the demo pages look for models: flags over environment over defaults, and the
one-line messages for bad flags and missing files."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from sgm.demo.options import (
    DemoOptions,
    demo_options,
    missing_checkpoint,
    model_files,
    script_argv,
)
from sgm.errors import ConfigError, InputError


def test_flags_beat_environment_beat_defaults(tmp_path):
    env = {"SGM_DEMO_CHECKPOINTS": "/env/ckpts", "SGM_DEMO_DEVICE": "cpu"}
    assert demo_options(environ={}) == DemoOptions()
    options = demo_options(["--checkpoints", str(tmp_path)], environ=env)
    assert options.checkpoints == tmp_path and options.device == "cpu"
    assert options.outputs == Path("outputs/demo")


def test_bad_flags_and_files_are_one_line_errors(tmp_path):
    with pytest.raises(InputError, match="page.py: unrecognized arguments: --nope"):
        demo_options(["--nope"], environ={}, prog="page.py")
    with pytest.raises(ConfigError, match="model config not found"):
        demo_options(["--config", str(tmp_path / "missing.yaml")], environ={})
    with pytest.raises(InputError, match="device: 'gpu9' is not a device"):
        demo_options(environ={"SGM_DEMO_DEVICE": "gpu9"})
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="checkpoints folder .* is a file"):
        demo_options(environ={"SGM_DEMO_CHECKPOINTS": str(tmp_path / "file")})


def test_page_arguments_only_from_the_page_command_line(monkeypatch, tmp_path):
    page = tmp_path / "page.py"
    monkeypatch.setattr(sys, "argv", [str(page), "--device", "cpu"])
    assert script_argv(page) == ["--device", "cpu"]
    monkeypatch.setattr(sys, "argv", ["pytest", "-q", "-x"])
    assert script_argv(page) == []


def test_configs_folder_and_selected_overrides(tmp_path):
    released, mine = tmp_path / "released", tmp_path / "mine"
    released.mkdir(), mine.mkdir()
    (released / "a.yaml").write_text("model: {}")
    (released / "b.yaml").write_text("model: {}")
    (mine / "a.yaml").write_text("model: {}")
    options = DemoOptions(
        checkpoints=tmp_path / "ck", configs=mine, ckpt=tmp_path / "own.safetensors"
    )
    files = model_files("A", "a.yaml", "a.safetensors", released, options)
    assert files.config == mine / "a.yaml" and files.ckpt == tmp_path / "own.safetensors"
    other = model_files("B", "b.yaml", "b.safetensors", released, options, selected=False)
    assert other.config == released / "b.yaml" and other.ckpt == tmp_path / "ck" / "b.safetensors"
    assert missing_checkpoint(files) == (
        f"A: checkpoint {tmp_path / 'own.safetensors'} not found (set by --ckpt / "
        "SGM_DEMO_CKPT). Nothing is downloaded."
    )
    assert "Put it at " + str(tmp_path / "ck" / "b.safetensors") in missing_checkpoint(other)
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "b.safetensors").write_bytes(b"")
    assert missing_checkpoint(other) is None
    with pytest.raises(ConfigError, match="C: model config not found"):
        model_files("C", "c.yaml", "c.safetensors", released, options)
