"""sgm.cli: one-line errors with exit 2, argument types, device checks."""

import argparse

import pytest
import torch

from sgm import cli
from sgm.errors import CheckpointError


def _parser():
    parser = cli.ArgumentParser(prog="tool")
    parser.add_argument("--num_steps", type=cli.positive_int, default=3)
    parser.add_argument("--strength", type=cli.unit_interval, default=1.0)
    parser.add_argument("--width", type=cli.multiple_of(64), default=64)
    parser.add_argument("--output_folder", type=cli.output_folder, default="out")
    cli.add_device_args(parser)
    cli.add_lora_arg(parser)
    return parser


@pytest.mark.parametrize(
    "argv, culprit",
    [
        (["--num_steps", "0"], "--num_steps"),
        (["--num_steps", "-5"], "--num_steps"),
        (["--num_steps", "abc"], "'abc' is not an integer"),
        (["--strength", "1.5"], "(0, 1]"),
        (["--width", "100"], "not a multiple of 64"),
        (["--num_step", "3"], "unrecognized arguments: --num_step"),
        (["--num"], "--num"),
        (["--device", "bogus"], "--device"),
        (["--dtype", "fp8"], "--dtype"),
        (["--lora", "missing.safetensors:0.5"], "missing.safetensors does not exist"),
    ],
)
def test_bad_flag_is_one_line_exit_2(argv, culprit, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parser().parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: tool:")
    assert culprit in err


def test_unavailable_accelerator_is_refused(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit):
        _parser().parse_args(["--device", "cuda"])
    assert "no CUDA device" in capsys.readouterr().err


def test_output_folder_that_is_a_file(tmp_path, capsys):
    file = tmp_path / "taken"
    file.write_text("x")
    for target in (file, file / "below"):
        with pytest.raises(SystemExit):
            _parser().parse_args(["--output_folder", str(target)])
        assert str(file) in capsys.readouterr().err
    assert cli.output_folder(str(tmp_path / "new" / "deeper")) == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()


def test_lora_scale_and_defaults(tmp_path):
    from safetensors.torch import save_file

    adapter = tmp_path / "a.lora.safetensors"
    save_file({"lora_unet_out.lora_down.weight": torch.zeros(1, 2)}, str(adapter))
    args = _parser().parse_args(["--lora", f"{adapter}:0.25", "--lora", str(adapter)])
    assert args.lora == [(adapter, 0.25), (adapter, 1.0)]
    assert args.device == "cpu" and args.dtype == "auto" and args.low_vram is False


def test_run_turns_library_errors_into_exit_2(capsys):
    def fail():
        raise CheckpointError("checkpoint not found: checkpoints/x.safetensors\nmore detail")

    assert cli.run(fail, prog="tool") == 2
    assert (
        capsys.readouterr().err == "error: tool: checkpoint not found: checkpoints/x.safetensors\n"
    )
    assert cli.run(lambda: None) == 0
    with pytest.raises(ZeroDivisionError):
        cli.run(lambda: 1 / 0)


def test_check_raises_input_error():
    cli.check(True, "unused")
    with pytest.raises(cli.InputError, match="two flags disagree"):
        cli.check(False, "two flags disagree")
    assert isinstance(cli.positive_int("4"), int)
    with pytest.raises(argparse.ArgumentTypeError):
        cli.positive_float("inf")


def test_misspelled_flag_fails_before_values_are_converted(capsys):
    converted = []

    def recording(text):
        converted.append(text)
        return text

    parser = cli.ArgumentParser(prog="tool")
    parser.add_argument("--device", type=recording, default="auto")
    with pytest.raises(SystemExit):
        parser.parse_args(["--devise=cpu"])
    assert converted == [] and "--devise=cpu" in capsys.readouterr().err
    assert parser.parse_args(["--device=cpu"]).device == "cpu"


def test_sub_command_flags_are_left_to_the_sub_parser(capsys):
    parser = cli.ArgumentParser(prog="tool")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("export").add_argument("--out", type=cli.output_folder)
    assert parser.parse_args(["export", "--out", "x"]).out.name == "x"
    with pytest.raises(SystemExit):
        parser.parse_args(["export", "--outt", "x"])
    assert "--outt" in capsys.readouterr().err


def test_non_negative_float():
    assert cli.non_negative_float("0") == 0.0
    for bad in ("-0.1", "nan", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli.non_negative_float(bad)


def test_sigterm_ends_a_command_after_its_clean_up(tmp_path):
    # SIGTERM mid-write: the command's finally blocks run (no temporary file is left
    # beside the outputs), it exits 143 with one line, and the handler is put back.
    import subprocess
    import sys

    script = f"""
import os, signal, sys, time
from pathlib import Path
from sgm import cli
from sgm.output_files import write_new_file

def write(tmp):
    Path(tmp).write_bytes(b"partial")
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)

code = cli.run(lambda: write_new_file(write, [Path({str(tmp_path)!r}) / "out.png"]), prog="tool")
assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
sys.exit(code)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 143, result.stderr
    assert result.stderr.strip() == "tool: terminated"
    assert list(tmp_path.iterdir()) == []
