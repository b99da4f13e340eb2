"""main.py with two CPU processes (DDP over gloo): ranks end with identical weights."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "tests" / "configs" / "tiny_train.yaml")


@pytest.mark.slow
def test_ddp_two_cpu_processes_agree(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests" / "helpers")}
    env.pop("SGM_RUN_NOW", None)
    # a launcher's variables left by an earlier test would make the run wait for ranks
    for name in (
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
        "NODE_RANK",
        "GROUP_RANK",
        "MASTER_ADDR",
        "MASTER_PORT",
        "TORCHELASTIC_RUN_ID",
        "SLURM_PROCID",
        "SLURM_NTASKS",
        "SLURM_LOCALID",
        "SLURM_JOB_ID",
    ):
        env.pop(name, None)
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "main.py"),
            "--base",
            TINY,
            "--logdir",
            str(tmp_path),
            "-n",
            "ddp",
            "--accelerator",
            "cpu",
            "--devices",
            "2",
            "lightning.trainer.max_steps=3",
            "model.params.use_ema=true",
            "lightning.callbacks.image_logger.params.disabled=true",
            "lightning.callbacks.dump.target=ddp_dump.DumpWeights",
            f"lightning.callbacks.dump.params.out={tmp_path}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["step"] for r in ranks] == [3, 3]
    a, b = ranks[0]["state"], ranks[1]["state"]
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    # one run folder for both ranks, and training moved the weights off their init
    (logdir,) = tmp_path.glob("*_ddp")
    last = torch.load(logdir / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 3
    assert int(a["model_ema.num_updates"]) == 3
