"""main.py with a model config plus configs/example_training/finetune/lora.yaml: adapter-only
checkpoints, exported .lora.safetensors files, and --resume."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lora_tiny import engine_config, randomize
from omegaconf import OmegaConf
from safetensors import safe_open

from sgm.util import instantiate_from_config

ROOT = Path(__file__).resolve().parents[2]
LORA_YAML = ROOT / "configs" / "example_training" / "finetune" / "lora.yaml"


def _main(*args):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("SGM_RUN_NOW", None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *map(str, args)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=400,
    )
    return proc.returncode, proc.stdout


@pytest.mark.slow  # two main.py processes
def test_lora_yaml_trains_exports_and_resumes(tmp_path):
    from safetensors.torch import save_file

    model = engine_config(None)
    model["params"]["conditioner_config"]["params"]["emb_models"][0]["params"]["n_classes"] = 10
    torch.manual_seed(0)
    engine = instantiate_from_config(model)
    randomize(engine.model, std=0.05)
    base = tmp_path / "base.safetensors"
    save_file({k: v.contiguous() for k, v in engine.state_dict().items()}, str(base))
    model["params"]["ckpt_path"] = str(base)
    model["params"].pop("learning_rate")
    config = {
        "model": model,
        "data": {
            "target": "sgm.data.toy.EmbeddedLoader",
            "params": {"dataset": "digits", "batch_size": 4},
        },
        "lightning": {
            "trainer": {
                "max_steps": 3,
                "num_sanity_val_steps": 0,
                "limit_val_batches": 0,
                "enable_model_summary": False,
            },
            "callbacks": {"image_logger": {"params": {"disabled": True}}},
        },
    }
    path = tmp_path / "tiny.yaml"
    OmegaConf.save(config, path)
    logs = tmp_path / "logs"
    code, out = _main(
        "--base",
        path,
        LORA_YAML,
        "--logdir",
        logs,
        "-n",
        "lora",
        "--no_date",
        "true",
        "model.params.lora_config.rank=2",
        "lightning.callbacks.lora_export.params.every_n_train_steps=2",
    )
    assert code == 0, out[-3000:]
    (run,) = logs.iterdir()
    exported = sorted(p.name for p in (run / "lora").glob("*.lora.safetensors"))
    assert exported == ["step-0000002.lora.safetensors", "step-0000003.lora.safetensors"]
    with safe_open(str(run / "lora" / exported[-1]), "pt") as f:
        assert all(k.startswith("unet.") and ".lora_" in k for k in f.keys())
        assert f.get_tensor(next(k for k in f.keys() if "lora_A" in k)).shape[0] == 2
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert state and all(".lora_A." in k or ".lora_B." in k for k in state)
    code, out = _main("--resume", run, "lightning.trainer.max_steps=4")
    assert code == 0, out[-3000:]
    resumed = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 4
    assert resumed["state_dict"].keys() == state.keys()
