"""main.py end to end: train, checkpoints, overrides, resume, SIGTERM, errors."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "configs" / "tiny_train.yaml")
TINY_OVERRIDES = str(ROOT / "tests" / "configs" / "tiny_train_overrides.yaml")


def _main(*args, **kwargs):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("SGM_RUN_NOW", None)
    return subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def _finish(proc, timeout=240):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def _ckpt(path):
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def first_run_and_log(tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    code, out = _finish(
        _main(
            "--base",
            TINY,
            TINY_OVERRIDES,
            "--logdir",
            str(logs),
            "-n",
            "tiny",
            "model.params.scale_factor=0.5",
            "lightning.trainer.max_steps=4",
        )
    )
    assert code == 0, out[-3000:]
    (logdir,) = logs.glob("*_tiny")
    return logdir, out


@pytest.fixture(scope="module")
def first_run(first_run_and_log):
    return first_run_and_log[0]


def test_training_log_has_no_unsafe_load_notice_nor_negative_epoch_count(first_run_and_log):
    _, out = first_run_and_log
    assert "weights_only" not in out  # every checkpoint written says what it holds
    assert re.search(r"Epoch \d+", out)
    assert not re.search(r"Epoch \d+/-", out)  # max_epochs is -1 for step-limited runs


def test_trains_and_writes_run_folder(first_run):
    ckpt = _ckpt(first_run / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 4
    assert any(k.startswith("model_ema.") for k in ckpt["state_dict"])  # from the 2nd --base
    (project,) = (first_run / "configs").glob("*-project.yaml")
    saved = OmegaConf.load(project)
    assert saved.model.params.scale_factor == 0.5  # dot-list override
    assert saved.data.params.batch_size == 8 and saved.model.params.use_ema is True
    assert list((first_run / "images" / "train").glob("samples_gs-000003_*.png"))
    assert list((first_run / "configs").glob("*-lightning.yaml"))


def test_resume_continues_step_and_optimizer(first_run):
    code, out = _finish(_main("--resume", str(first_run), "lightning.trainer.max_steps=6"))
    assert code == 0, out[-3000:]
    ckpt = _ckpt(first_run / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 6
    adam_steps = {float(s["step"]) for s in ckpt["optimizer_states"][0]["state"].values()}
    assert adam_steps == {6.0}  # 4 before + 2 after, not a fresh optimizer
    assert len(list((first_run / "configs").glob("*-project.yaml"))) >= 1


def test_sigterm_saves_checkpoint_and_exits(tmp_path):
    proc = _main(
        "--base",
        TINY,
        "--logdir",
        str(tmp_path),
        "-n",
        "term",
        "lightning.trainer.max_steps=100000",
        "lightning.callbacks.image_logger.params.disabled=true",
    )
    deadline = time.time() + 180
    while not list(tmp_path.glob("*_term/configs/*-project.yaml")):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.5)
    time.sleep(4.0)
    proc.send_signal(signal.SIGTERM)
    code, out = _finish(proc, timeout=120)
    assert code == 128 + signal.SIGTERM, out[-3000:]
    (last,) = tmp_path.glob("*_term/checkpoints/last.ckpt")
    assert 0 < _ckpt(last)["global_step"] < 100000
    assert "--resume" in out


def test_missing_file_and_wrong_key_exit_2(tmp_path, capsys, monkeypatch):
    from sgm.training.cli import main

    monkeypatch.setenv("SGM_RUN_NOW", "2000-01-01T00-00-00")  # main() shares it with ranks

    assert main(["--base", str(tmp_path / "nope.yaml"), "--logdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.yaml" in err[0] and err[0].startswith("error:")
    code = main(["--base", TINY, "--logdir", str(tmp_path), "model.params.bogus_key=1"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bogus_key" in err[0]
    assert main(["--resume", str(tmp_path / "no-run")]) == 2


# ------------------------------------------------------------ bad input: one line, exit 2


def _tree(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _refused(argv, culprit, tmp_path, capsys, monkeypatch):
    """main(argv) exits 2 with one line naming ``culprit`` and creates nothing."""
    from sgm.training.cli import main

    monkeypatch.setenv("SGM_RUN_NOW", "2000-01-01T00-00-00")
    before = _tree(tmp_path)
    try:
        code = main(argv)
    except SystemExit as exit_info:  # argparse
        code = exit_info.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: main.py:"), err
    assert culprit in err[0], err[0]
    assert _tree(tmp_path) == before
    return err[0]


def test_override_of_wrong_type_names_key_value_and_type(tmp_path, capsys, monkeypatch):
    line = _refused(
        [
            "--base",
            TINY,
            "--logdir",
            str(tmp_path),
            "model.params.network_config.params.num_res_blocks=two",
        ],
        "num_res_blocks=two",
        tmp_path,
        capsys,
        monkeypatch,
    )
    assert "expected an integer" in line


def test_override_without_equals_is_refused(tmp_path, capsys, monkeypatch):
    _refused(
        ["--base", TINY, "--logdir", str(tmp_path), "model.params.use_ema", "true"],
        "model.params.use_ema=VALUE",
        tmp_path,
        capsys,
        monkeypatch,
    )


def test_override_of_unknown_section_lists_the_known_ones(tmp_path, capsys, monkeypatch):
    line = _refused(
        ["--base", TINY, "--logdir", str(tmp_path), "modle.params.use_ema=true"],
        "'modle'",
        tmp_path,
        capsys,
        monkeypatch,
    )
    assert "data, lightning, model" in line


@pytest.mark.parametrize("value", ["-5", "abc"])
def test_max_steps_out_of_range_or_not_a_number(value, tmp_path, capsys, monkeypatch):
    line = _refused(
        ["--base", TINY, "--logdir", str(tmp_path), "--max_steps", value],
        "--max_steps",
        tmp_path,
        capsys,
        monkeypatch,
    )
    assert "not supported between" not in line


def test_accelerator_that_this_machine_lacks(tmp_path, capsys, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    _refused(
        ["--base", TINY, "--logdir", str(tmp_path), "--accelerator", "gpu"],
        "--accelerator",
        tmp_path,
        capsys,
        monkeypatch,
    )


def test_logdir_that_is_a_file(tmp_path, capsys, monkeypatch):
    taken = tmp_path / "taken"
    taken.write_text("x")
    _refused(["--base", TINY, "--logdir", str(taken)], str(taken), tmp_path, capsys, monkeypatch)


def test_config_whose_top_level_is_a_list(tmp_path, capsys, monkeypatch):
    config = tmp_path / "list.yaml"
    config.write_text("- model: {}\n")
    _refused(
        ["--base", str(config), "--logdir", str(tmp_path / "logs")],
        "list.yaml",
        tmp_path,
        capsys,
        monkeypatch,
    )


def _run_folder(tmp_path, write):
    run = tmp_path / "run"
    (run / "configs").mkdir(parents=True)
    shutil.copy(TINY, run / "configs" / "2000-01-01T00-00-00-project.yaml")
    (run / "checkpoints").mkdir()
    write(run / "checkpoints")
    return run


def _truncated(ckpts):
    torch.save(
        {"state_dict": {"w": torch.ones(64)}, "optimizer_states": [], "loops": {}},
        ckpts / "last.ckpt",
    )
    data = (ckpts / "last.ckpt").read_bytes()
    (ckpts / "last.ckpt").write_bytes(data[: len(data) // 2])


def _safetensors(ckpts):
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2)}, str(ckpts / "last.safetensors"))


@pytest.mark.parametrize(
    "write, target, culprit",
    [
        (_truncated, "run", "truncated or corrupt"),
        (
            lambda c: torch.save({"state_dict": {"w": torch.ones(2)}}, c / "last.ckpt"),
            "run",
            "weights only",
        ),
        (_safetensors, "checkpoints/last.safetensors", "weights only"),
        (
            lambda c: (c / "last.ckpt").write_bytes(os.urandom(4096)),
            "checkpoints/last.ckpt",
            "truncated or corrupt",
        ),
    ],
    ids=["truncated", "bare-state-dict", "safetensors", "random-bytes"],
)
def test_resume_from_unusable_checkpoint(write, target, culprit, tmp_path, capsys, monkeypatch):
    run = _run_folder(tmp_path, write)
    path = run if target == "run" else run / target
    line = _refused(["--resume", str(path)], culprit, tmp_path, capsys, monkeypatch)
    assert "weights_only=False" not in line and "arbitrary code" not in line


def test_failed_run_leaves_no_run_folder(tmp_path):
    # The network expects 3 channels, the data has 1: the run fails in its first step,
    # after the run folder was set up.
    code, out = _finish(
        _main(
            "--base",
            TINY,
            "--logdir",
            str(tmp_path),
            "-n",
            "broken",
            "model.params.network_config.params.in_channels=3",
            "lightning.trainer.max_steps=2",
        )
    )
    assert code != 0
    assert "Run folder" in out, out[-3000:]
    assert list(tmp_path.iterdir()) == []
