"""The full-size fine-tune configs build (on the meta device) the released models' keys."""

import tarfile

import pytest
import torch
from finetune_tiny import FINETUNE
from omegaconf import OmegaConf

from sgm.util import instantiate_from_config, load_configs

ROOT = FINETUNE.parents[2]
RELEASED = {
    "sd_2_1": ROOT / "configs" / "inference" / "sd_2_1.yaml",
    "sdxl_base": ROOT / "configs" / "inference" / "sd_xl_base.yaml",
    "svd": ROOT / "scripts" / "sampling" / "configs" / "svd.yaml",
    "svd_xt": ROOT / "scripts" / "sampling" / "configs" / "svd_xt.yaml",
}


def _keys(config) -> dict:
    config = OmegaConf.merge(config, {"params": {"ckpt_path": None}})
    with torch.device("meta"):
        model = instantiate_from_config(config, key="model")
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_finetune_config_builds_the_released_state_dict(name, tmp_path):
    cfg = load_configs(
        [FINETUNE / f"{name}.yaml"], [f"data.params.train.datapipeline.urls=[{tmp_path}]"]
    )
    assert cfg.model.params.ckpt_path.startswith("checkpoints/")
    assert cfg.lightning.trainer.precision == "bf16-mixed"
    assert cfg.model.params.network_config.params.use_checkpoint
    if name.startswith("svd"):  # clip length agrees everywhere it appears
        frames = 25 if name == "svd_xt" else 14
        params = cfg.model.params
        assert cfg.data.params.train.datapipeline.postprocessors[0].params.num_frames == frames
        assert params.loss_fn_config.params.sigma_sampler_config.params.num_frames == frames
        assert params.sampler_config.params.guider_config.params.num_frames == frames
        assert [
            e.params.n_copies
            for e in params.conditioner_config.params.emb_models
            if "n_copies" in e.params
        ] == [frames, frames]
    released = OmegaConf.load(RELEASED[name]).model
    released.params.pop("sampler_config", None)  # sampling scripts fill it in; no weights
    assert _keys(cfg.model) == _keys(released)
    tarfile.open(tmp_path / "000000.tar", "w").close()  # an empty shard: shards are checked
    data = instantiate_from_config(cfg.data, key="data")
    assert data.train_config["datapipeline"]["urls"] == [str(tmp_path)]


def test_lora_addon_merges_into_every_finetune_config():
    for name in RELEASED:
        cfg = load_configs([FINETUNE / f"{name}.yaml", FINETUNE / "lora.yaml"], [])
        assert cfg.model.params.lora_config.rank == 16
        assert cfg.model.params.use_ema is False
        assert cfg.model.base_learning_rate == 1.0e-4
