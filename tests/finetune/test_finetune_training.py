"""The fine-tune configs at toy widths train on CPU from written shards, and resume."""

import pytest
import pytorch_lightning as pl
import torch
from finetune_tiny import (
    FINETUNE,
    register_arch,
    tiny_image_config,
    tiny_video_config,
    write_image_shard,
    write_video_shard,
)
from omegaconf import OmegaConf

from sgm.util import instantiate_from_config


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory, tiny_clip_dir):
    register_arch(tmp_path_factory.mktemp("open_clip_arch"))
    return tiny_clip_dir


def _trainer(root, max_steps, callbacks=()):
    return pl.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=root,
        callbacks=list(callbacks),
        gradient_clip_val=1.0,
    )


def _fixed_loss(model, batch, seed=0):
    torch.manual_seed(seed)
    model.eval()
    with torch.no_grad():
        losses = [model.shared_step(dict(batch))[0].item() for _ in range(3)]
    model.train()
    return sum(losses) / len(losses)


def _train_and_resume(cfg, tmp_path, steps):
    cfg.model.params.learning_rate = 1e-3
    if cfg.model.params.get("scheduler_config") is not None:
        cfg.model.params.scheduler_config.params.warm_up_steps = [1]
    torch.manual_seed(0)
    model = instantiate_from_config(cfg.model, key="model")
    data = instantiate_from_config(cfg.data, key="data")
    batch = next(iter(data.train_dataloader()))
    before = _fixed_loss(model, batch)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    _trainer(tmp_path, steps, [ckpt]).fit(model, data)
    after = _fixed_loss(model, batch)
    assert after < before, f"loss on a fixed batch went from {before:.4f} to {after:.4f}"
    torch.manual_seed(1)
    resumed = instantiate_from_config(cfg.model, key="model")
    trainer = _trainer(tmp_path, steps + 1)
    snapshot = {}

    class Snapshot(pl.Callback):
        def on_train_start(self, trainer, module):
            snapshot.update({k: v.clone() for k, v in module.state_dict().items()})

    trainer.callbacks.append(Snapshot())
    trainer.fit(resumed, data, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert trainer.global_step == steps + 1
    trained = model.state_dict()
    assert all(torch.equal(snapshot[k], trained[k]) for k in trained)
    return model


@pytest.mark.parametrize("name", ["sd_2_1", "sdxl_base"])
def test_image_finetune_trains_and_resumes(name, clip_dir, tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    write_image_shard(shards / "000000.tar", [(24, 40), (32, 16), (20, 20), (40, 24)])
    cfg = tiny_image_config(name, shards, clip_dir)
    _train_and_resume(cfg, tmp_path, steps=5)


def test_svd_finetune_trains_and_resumes(clip_dir, tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    write_video_shard(shards / "000000.tar", [16, 20], fps=24, motion=[40, 160])
    cfg = tiny_video_config(shards)
    _train_and_resume(cfg, tmp_path, steps=5)


def test_lora_addon_on_a_finetune_config(clip_dir, tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    write_image_shard(shards / "000000.tar", [(24, 40), (32, 16)])
    cfg = tiny_image_config("sdxl_base", shards, clip_dir)
    cfg = OmegaConf.merge(cfg, OmegaConf.load(FINETUNE / "lora.yaml"))
    cfg.model.params.lora_config.rank = 2
    model = instantiate_from_config(cfg.model, key="model")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert cfg.lightning.callbacks.lora_export.target == "sgm.lora.training.LoraExport"
