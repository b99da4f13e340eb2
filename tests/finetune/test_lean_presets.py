"""The fine-tune add-ons merge onto the fine-tune configs and build what they promise:
lean_24gb (bf16 weights, Adafactor) and svd_motion (SVD's temporal layers only, 8-bit
AdamW), with the fused step as an override of lean_24gb."""

import pytest
import torch
from finetune_tiny import FINETUNE, register_arch, tiny_video_config
from omegaconf import OmegaConf

from sgm.models._trainable import TEMPORAL_PATTERNS
from sgm.training.optimizers import FusedBackwardStep
from sgm.util import instantiate_from_config


@pytest.fixture(scope="module")
def video_config(tmp_path_factory):
    register_arch(tmp_path_factory.mktemp("open_clip_arch"))
    return tiny_video_config(tmp_path_factory.mktemp("shards"))


def _optimizer(cfg):
    model = instantiate_from_config(cfg.model, key="model")
    model.learning_rate = 1e-4
    return model, model.configure_optimizers()


def test_svd_motion_trains_the_temporal_layers_with_8bit_adamw(video_config):
    cfg = OmegaConf.merge(video_config, OmegaConf.load(FINETUNE / "svd_motion.yaml"))
    assert cfg.lightning.trainer.precision == "bf16-true"
    assert list(cfg.model.params.trainable) == list(TEMPORAL_PATTERNS)
    model, optimizer = _optimizer(cfg)
    assert type(optimizer).__name__ == "AdamW8bit"
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(
        any(part in n for part in (".time_stack.", ".time_mixer.", ".time_pos_embed."))
        for n in trained
    )


def test_lean_24gb_uses_adafactor_and_the_fused_step_override(video_config):
    cfg = OmegaConf.merge(video_config, OmegaConf.load(FINETUNE / "lean_24gb.yaml"))
    trainer = cfg.lightning.trainer
    assert trainer.precision == "bf16-true" and trainer.accumulate_grad_batches == 1
    assert trainer.gradient_clip_val is None
    _, optimizer = _optimizer(cfg)
    assert type(optimizer) is torch.optim.Adafactor
    fused = OmegaConf.merge(
        cfg,
        OmegaConf.from_dotlist(
            [
                "model.params.optimizer_config.target=sgm.training.optimizers.FusedBackwardStep",
                "model.params.optimizer_config.params.optimizer.target=torch.optim.Adafactor",
            ]
        ),
    )
    _, optimizer = _optimizer(fused)
    assert isinstance(optimizer, FusedBackwardStep)
    assert all(type(o) is torch.optim.Adafactor for o in optimizer.inner)
