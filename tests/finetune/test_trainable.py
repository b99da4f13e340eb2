"""Training part by name patterns: SVD's temporal layers alone train; the rest gets no
gradient and no optimizer state, and checkpoints say what was trained."""

import re

import pytest
import pytorch_lightning as pl
import torch
from finetune_tiny import register_arch, tiny_video_config
from omegaconf import OmegaConf

from sgm.errors import ConfigError
from sgm.models._trainable import CHECKPOINT_KEY, TEMPORAL_PATTERNS
from sgm.util import instantiate_from_config

TEMPORAL = re.compile(r"^model\.diffusion_model\..*\.(time_stack|time_mixer|time_pos_embed)\.")


@pytest.fixture(scope="module")
def video_config(tmp_path_factory):
    register_arch(tmp_path_factory.mktemp("open_clip_arch"))
    return tiny_video_config(tmp_path_factory.mktemp("shards"))


def _engine(config, **params):
    config = OmegaConf.merge(config, {"model": {"params": params}})
    return instantiate_from_config(config.model, key="model")


def test_temporal_patterns_select_exactly_svds_temporal_layers(video_config):
    model = _engine(video_config, trainable=list(TEMPORAL_PATTERNS), learning_rate=1e-3)
    names = dict(model.named_parameters())
    expected = {n for n in names if TEMPORAL.match(n)}
    assert expected and len(expected) < len(names) // 2
    assert {n for n, p in names.items() if p.requires_grad} == expected
    optimizer = model.configure_optimizers()
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert held == {id(names[n]) for n in expected}


def test_a_module_name_pattern_selects_the_modules_parameters(video_config):
    model = _engine(video_config, trainable="model.diffusion_model.out")
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained == {
        n for n, _ in model.named_parameters() if n.startswith("model.diffusion_model.out.")
    }


def test_a_pattern_that_selects_nothing_lists_the_name_parts(video_config):
    with pytest.raises(ConfigError, match=r"'\*temporal\*' selects no.*time_stack.*transformer"):
        _engine(video_config, trainable=["*.time_stack.*", "*temporal*"])


def test_frozen_embedders_cannot_be_selected(video_config):
    with pytest.raises(ConfigError, match="'conditioner.embedders.0.\\*' selects no"):
        _engine(video_config, trainable=["conditioner.embedders.0.*"])


def test_selection_trains_only_the_chosen_parameters_and_checkpoints_record_them(tmp_path):
    config = OmegaConf.load("tests/configs/tiny_train.yaml")
    config.model.params.trainable = ["*.output_blocks.*", "conditioner.embedders.0.embedding"]
    config.model.params.learning_rate = 1e-2
    pl.seed_everything(0)
    model = instantiate_from_config(config.model)
    data = instantiate_from_config(config.data)
    chosen = {
        n
        for n, _ in model.named_parameters()
        if ".output_blocks." in n or n == "conditioner.embedders.0.embedding.weight"
    }
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {}

    class Grads(pl.Callback):
        def on_before_optimizer_step(self, trainer, module, optimizer):
            grads.update({n: p.grad for n, p in module.named_parameters()})
            states = {id(p) for p in optimizer.state}
            grads["__state__"] = states

    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)
    pl.Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[Grads(), ckpt],
        default_root_dir=tmp_path,
    ).fit(model, data)
    after = dict(model.named_parameters())
    changed = {n for n in after if not torch.equal(before[n], after[n])}
    assert changed <= chosen and len(changed) > len(chosen) // 2  # zero-initialised layers
    assert {n for n, g in grads.items() if n != "__state__" and g is not None} == chosen
    assert grads["__state__"] == {id(after[n]) for n in chosen}
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)[CHECKPOINT_KEY]
    assert saved["patterns"] == list(config.model.params.trainable)
    assert set(saved["names"]) == chosen
    assert saved["count"] == sum(after[n].numel() for n in chosen)


def test_selection_and_lora_exclude_each_other():
    config = OmegaConf.load("tests/configs/tiny_train.yaml")
    config.model.params.trainable = ["*.out.*"]
    config.model.params.lora_config = {"rank": 2}
    with pytest.raises(ConfigError, match="trainable and lora_config exclude each other"):
        instantiate_from_config(config.model)
