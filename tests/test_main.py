"""main.py end to end: train, checkpoints, overrides, resume, SIGTERM, errors."""

import os
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
    return subprocess.Popen([sys.executable, str(ROOT / "main.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **kwargs)


def _finish(proc, timeout=240):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def _ckpt(path):
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    code, out = _finish(_main("--base", TINY, TINY_OVERRIDES, "--logdir", str(logs), "-n", "tiny",
                              "model.params.scale_factor=0.5", "lightning.trainer.max_steps=4"))
    assert code == 0, out[-3000:]
    (logdir,) = logs.glob("*_tiny")
    return logdir


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
    proc = _main("--base", TINY, "--logdir", str(tmp_path), "-n", "term",
                 "lightning.trainer.max_steps=100000",
                 "lightning.callbacks.image_logger.params.disabled=true")
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
