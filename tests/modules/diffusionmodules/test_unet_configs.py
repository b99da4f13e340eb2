"""Full-size SD 2.1 / SDXL networks from configs/inference, built on the meta device."""

from pathlib import Path

import pytest
import torch
from omegaconf import ListConfig, OmegaConf
from unet_oracle import to_diffusers

from sgm.modules.diffusionmodules.openaimodel import UNetModel
from sgm.util import instantiate_from_config

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "inference"

# Parameter counts of the released UNets (diffusers' unet/ folders of the HF repos).
PUBLISHED = {
    "sd_2_1": 865_910_724,
    "sd_2_1_768": 865_910_724,
    "sd_xl_base": 2_567_463_684,
    "sd_xl_refiner": 2_259_526_660,
}


def network_config(name: str):
    return OmegaConf.load(CONFIGS / f"{name}.yaml").model.params.network_config


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_full_size_network_keys_and_counts_match_diffusers(name):
    config = network_config(name)
    with torch.device("meta"):
        ours = instantiate_from_config(config)
    assert isinstance(ours, UNetModel)
    count = sum(p.numel() for p in ours.parameters())
    # Every key maps through diffusers' converter and loads strictly.
    theirs = to_diffusers(ours, OmegaConf.to_container(config.params))
    assert count == sum(p.numel() for p in theirs.parameters())
    assert count == PUBLISHED[name]


def test_refiner_context_dim_arrives_as_listconfig_and_builds():
    config = network_config("sd_xl_refiner")
    assert isinstance(config.params.context_dim, ListConfig)
    with torch.device("meta"):
        net = instantiate_from_config(config)
    block = net.input_blocks[4][1].transformer_blocks[3]
    assert block.attn2.to_k.weight.shape == (768, 1280)


def test_sdxl_keys_have_original_layout():
    with torch.device("meta"):
        keys = instantiate_from_config(network_config("sd_xl_base")).state_dict().keys()
    for key in (
        "time_embed.0.weight",
        "label_emb.0.0.weight",
        "label_emb.0.2.bias",
        "input_blocks.1.0.in_layers.0.weight",
        "input_blocks.3.0.op.weight",
        "input_blocks.4.1.proj_in.weight",
        "input_blocks.7.1.transformer_blocks.9.attn2.to_out.0.weight",
        "middle_block.1.transformer_blocks.9.ff.net.0.proj.weight",
        "output_blocks.2.2.conv.weight",
        "output_blocks.8.0.skip_connection.weight",
        "out.2.weight",
    ):
        assert key in keys, key


def test_inference_configs_hold_original_values():
    base = network_config("sd_xl_base").params
    assert (base.adm_in_channels, base.model_channels, base.context_dim) == (
        2816,
        320,
        2048,
    )
    assert list(base.transformer_depth) == [1, 2, 10]
    assert base.spatial_transformer_attn_type == "softmax-xformers"
    refiner = network_config("sd_xl_refiner").params
    assert (refiner.adm_in_channels, refiner.model_channels) == (2560, 384)
    assert list(refiner.channel_mult) == [1, 2, 4, 4]
    sd21 = OmegaConf.load(CONFIGS / "sd_2_1.yaml").model.params
    sd21_768 = OmegaConf.load(CONFIGS / "sd_2_1_768.yaml").model.params
    assert list(sd21.network_config.params.attention_resolutions) == [4, 2, 1]
    assert sd21.scale_factor == 0.18215
    scaling = "denoiser_config.params.scaling_config.target"
    assert OmegaConf.select(sd21, scaling).endswith("EpsScaling")
    assert OmegaConf.select(sd21_768, scaling).endswith("VScaling")
