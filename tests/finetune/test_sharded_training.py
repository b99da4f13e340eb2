"""FSDP2 on 2 CPU processes (gloo) reaches DDP's weights (the oracle: Lightning's DDP on
the same seeds and data) and resumes from its sharded checkpoint; one process and EMA are
refused."""

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from sharded_runs import launch

from sgm.errors import ConfigError
from sgm.training.strategies import FSDP2, shard_engine
from sgm.util import instantiate_from_config


@pytest.mark.slow
def test_fsdp2_matches_ddp_and_resumes_from_its_sharded_checkpoint(tmp_path):
    ddp = launch(2, "ddp", tmp_path / "ddp", steps=3)
    fsdp = launch(2, "fsdp2", tmp_path / "fsdp", steps=3)
    sharded = tmp_path / "fsdp" / "ckpt" / "last.ckpt"
    assert sharded.is_dir()  # a distributed checkpoint: every process wrote its shards
    _close(fsdp["weights"], ddp["weights"])
    # resuming: the sharded checkpoint restores the weights and the optimizer state, so
    # one more step lands where DDP resumed from its own checkpoint lands
    ddp_resumed = launch(
        2, "ddp", tmp_path / "ddp4", steps=4, resume=str(tmp_path / "ddp" / "ckpt" / "last.ckpt")
    )
    resumed = launch(2, "fsdp2", tmp_path / "fsdp4", steps=4, resume=str(sharded))
    assert resumed["step"] == ddp_resumed["step"] == 4
    _close(resumed["start"], fsdp["weights"])
    _close(resumed["weights"], ddp_resumed["weights"])
    assert sum(not torch.equal(resumed["weights"][k], v) for k, v in fsdp["weights"].items()) > 10


def _close(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, atol=1e-5, rtol=0, msg=name)


def _engine(**params):
    config = OmegaConf.load("tests/configs/tiny_train.yaml")
    config.model.params.update(params)
    return instantiate_from_config(config.model), instantiate_from_config(config.data)


def test_fsdp2_with_one_process_is_refused(tmp_path):
    model, data = _engine(learning_rate=1e-3)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        strategy=FSDP2(),
        max_steps=1,
        logger=False,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
    )
    with pytest.raises(ConfigError, match="FSDP2 with a single process"):
        trainer.fit(model, data)


def test_fsdp2_with_ema_is_refused():
    model, _ = _engine(use_ema=True)
    with pytest.raises(ConfigError, match="FSDP2 with model.params.use_ema: true is not supported"):
        shard_engine(model, mesh=None)


FINETUNE = "sgm/configs/example_training/finetune"


def test_the_fsdp_add_on_builds_fsdp2_without_ema():
    base = OmegaConf.load("tests/configs/tiny_train.yaml")
    cfg = OmegaConf.merge(base, OmegaConf.load(f"{FINETUNE}/fsdp.yaml"))
    assert cfg.model.params.use_ema is False and cfg.lightning.trainer.devices == 2
    strategy = instantiate_from_config(cfg.lightning.strategy)
    assert isinstance(strategy, FSDP2) and strategy.reshard_after_forward


@pytest.mark.parametrize("stage", [2, 3])
def test_the_deepspeed_add_ons_build_zero_or_say_why_not(stage):
    import importlib.util

    cfg = OmegaConf.load(f"{FINETUNE}/deepspeed_zero{stage}.yaml")
    assert cfg.model.params.use_ema is False
    if importlib.util.find_spec("deepspeed") and torch.cuda.is_available():
        strategy = instantiate_from_config(cfg.lightning.strategy)
        assert strategy.config["zero_optimization"]["stage"] == stage
        return
    missing = "deepspeed package" if not importlib.util.find_spec("deepspeed") else "CUDA"
    with pytest.raises(ConfigError, match=f"deepspeed_zero needs .*{missing}.*FSDP2"):
        instantiate_from_config(cfg.lightning.strategy)


@pytest.mark.parametrize(
    "params, culprit",
    [({"stage": 1}, "stage 1 must be 2 or 3"), ({"offload_parameters": True}, "needs stage 3")],
)
def test_impossible_deepspeed_settings_are_refused(params, culprit):
    from sgm.training.strategies import deepspeed_zero

    with pytest.raises(ConfigError, match=culprit):
        deepspeed_zero(**params)
