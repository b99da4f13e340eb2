"""Conditioners of the released configs, built on meta with networking disabled:
state-dict keys and shapes equal those of open_clip / transformers models built directly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from builders import released_clip_text_model

from sgm.util import instantiate_from_config, load_configs

ROOT = Path(__file__).resolve().parents[3]
CONFIGS = {
    "sd_2_1": ROOT / "configs/inference/sd_2_1.yaml",
    "sd_xl_base": ROOT / "configs/inference/sd_xl_base.yaml",
    "sd_xl_refiner": ROOT / "configs/inference/sd_xl_refiner.yaml",
    "svd": ROOT / "configs/inference/svd.yaml",
    "sv3d_p": ROOT / "configs/inference/sv3d_p.yaml",
    "sv4d": ROOT / "scripts/sampling/configs/sv4d.yaml",
}


def build_conditioner(name):
    config = load_configs([CONFIGS[name]])
    with torch.device("meta"):
        return instantiate_from_config(config.model.params.conditioner_config)


def shapes(module, prefix=""):
    return {prefix + k: tuple(v.shape) for k, v in module.state_dict().items()}


def open_clip_shapes(arch, drop):
    import open_clip

    with torch.device("meta"):
        model = open_clip.create_model(arch, pretrained=None, device="meta")
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith(drop)}


def clip_l_shapes():
    model = released_clip_text_model("clip_l")
    out = {"text_model." + k: tuple(v.shape) for k, v in model.state_dict().items()}
    out["text_model.embeddings.position_ids"] = (1, 77)
    return out


def sub(state, prefix):
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def n_params(state):
    total = 0
    for shape in state.values():
        total += torch.Size(shape).numel()
    return total


def test_sd_2_1(no_network):
    state = shapes(build_conditioner("sd_2_1"))
    assert sub(state, "embedders.0.model.") == open_clip_shapes("ViT-H-14", "visual.")
    assert len(state) == len(sub(state, "embedders.0.model."))
    assert sub(state, "embedders.0.model.")["token_embedding.weight"] == (49408, 1024)


def test_sd_xl_base(no_network):
    state = shapes(build_conditioner("sd_xl_base"))
    assert sub(state, "embedders.0.transformer.") == clip_l_shapes()
    assert sub(state, "embedders.1.model.") == open_clip_shapes("ViT-bigG-14", "visual.")
    # CLIP-L text 123.06 M, bigG text 694.66 M parameters; size embedders have none.
    assert n_params(sub(state, "embedders.0.transformer.")) - 77 == 123_060_480
    assert n_params(sub(state, "embedders.1.model.")) == 694_659_841
    assert {k.split(".")[1] for k in state} == {"0", "1"}


def test_sd_xl_refiner(no_network):
    state = shapes(build_conditioner("sd_xl_refiner"))
    assert sub(state, "embedders.0.model.") == open_clip_shapes("ViT-bigG-14", "visual.")
    assert {k.split(".")[1] for k in state} == {"0"}


def vae_shapes(conditioner_state, prefix):
    vae = sub(conditioner_state, prefix)
    groups = {k.split(".")[0] for k in vae}
    assert groups == {"encoder", "decoder", "quant_conv", "post_quant_conv"}
    assert vae["quant_conv.weight"] == (8, 8, 1, 1)
    assert vae["encoder.conv_in.weight"] == (128, 3, 3, 3)
    assert vae["decoder.conv_out.weight"] == (3, 128, 3, 3)
    # The SD first-stage autoencoder (f8, 4 latent channels) has 83,653,863 parameters.
    assert n_params(vae) == 83_653_863
    return vae


@pytest.mark.parametrize("name", ["svd", "sv3d_p"])
def test_svd_sv3d(no_network, name):
    state = shapes(build_conditioner(name))
    image = open_clip_shapes("ViT-H-14", "transformer.")
    assert sub(state, "embedders.0.open_clip.model.") == image
    assert any(k.startswith("visual.transformer.resblocks.31.") for k in image)
    vae_index = 3 if name == "svd" else 1
    vae_shapes(state, f"embedders.{vae_index}.encoder.")
    indices = {k.split(".")[1] for k in state}
    assert indices == {"0", str(vae_index)}


def test_sv4d(no_network):
    conditioner = build_conditioner("sv4d")
    state = shapes(conditioner)
    assert sub(state, "embedders.0.open_clip.model.") == open_clip_shapes(
        "ViT-H-14", "transformer."
    )
    for index in (1, 4, 5):
        vae_shapes(state, f"embedders.{index}.encoder.")
    assert {k.split(".")[1] for k in state} == {"0", "1", "4", "5"}
    keys = [e.input_key for e in conditioner.embedders]
    assert keys == [
        "cond_frames_without_noise",
        "cond_frames",
        "polar_rad",
        "azimuth_rad",
        "cond_view",
        "cond_motion",
    ]
    assert not any(p.requires_grad for p in conditioner.parameters())
