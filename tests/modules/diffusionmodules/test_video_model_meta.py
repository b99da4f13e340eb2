"""Full-size video networks from the shipped configs, built on the meta device.

SVD / SV3D: every key and shape equals diffusers' UNetSpatioTemporalConditionModel
(built with the same sizes) through the SVD key map, so the parameter counts agree.
SV4D / SV4D 2.0: the layout is SVD's with renamed temporal modules plus motion
attention; the checks pin that relation and the SV4D 2.0 extras.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from sgm.convert.svd_keys import svd_unet_key_map as make_key_map
from sgm.util import instantiate_from_config

ROOT = Path(__file__).resolve().parents[3]
CONFIGS = ROOT / "scripts" / "sampling" / "configs"


def _network(name: str) -> torch.nn.Module:
    cfg = OmegaConf.load(CONFIGS / f"{name}.yaml")
    with torch.device("meta"):
        return instantiate_from_config(cfg.model.params.network_config)


def _shapes(model: torch.nn.Module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _diffusers_svd(adm_in: int) -> dict[str, tuple]:
    from diffusers import UNetSpatioTemporalConditionModel

    with torch.device("meta"):
        model = UNetSpatioTemporalConditionModel(projection_class_embeddings_input_dim=adm_in)
    return _shapes(model)


@pytest.fixture(scope="module")
def svd_shapes():
    return _shapes(_network("svd"))


@pytest.mark.parametrize(
    "name,adm_in", [("svd", 768), ("svd_xt", 768), ("sv3d_u", 256), ("sv3d_p", 1280)]
)
def test_svd_family_matches_diffusers(name, adm_in):
    pytest.importorskip("diffusers")
    ours = _shapes(_network(name))
    theirs = _diffusers_svd(adm_in)
    convert = make_key_map(2)
    mapped = {convert(k): v for k, v in ours.items()}
    assert len(mapped) == len(ours) == len(theirs) == 1428
    assert mapped == theirs
    assert ours["label_emb.0.0.weight"] == (1280, adm_in)


def test_svd_parameter_count(svd_shapes):
    count = sum(torch.Size(s).numel() for s in svd_shapes.values())
    assert count == 1_524_623_082  # ~1.52B, same as diffusers' SVD UNet
    assert svd_shapes["input_blocks.1.0.time_stack.in_layers.2.weight"] == (320, 320, 3, 1, 1)
    assert svd_shapes["input_blocks.1.1.time_stack.0.ff_in.net.0.proj.weight"] == (2560, 320)
    assert svd_shapes["input_blocks.1.1.time_stack.0.attn2.to_k.weight"] == (320, 1024)


MOTION_EXTRAS = re.compile(r"\.(motion_blocks|time_mix_motion_embed|time_mixer_motion)\.")


def _as_svd_key(key: str) -> str:
    key = key.replace(".time_mix_blocks.", ".time_stack.")
    return key.replace(".time_mix_time_embed.", ".time_pos_embed.")


@pytest.mark.parametrize("name", ["sv4d", "sv4d2", "sv4d2_8views"])
def test_sv4d_layout(name, svd_shapes):
    ours = _shapes(_network(name))
    camera = name != "sv4d"
    core = {_as_svd_key(k): v for k, v in ours.items() if not MOTION_EXTRAS.search(k)}
    expected = dict(svd_shapes, **{"label_emb.0.0.weight": (1280, 1280)})
    if camera:  # view embeddings read the 1280-d UNet embedding
        for k, v in expected.items():
            if k.endswith("time_pos_embed.0.weight"):
                expected[k] = (v[0], 1280)
    assert core == expected
    extras = {k: v for k, v in ours.items() if MOTION_EXTRAS.search(k)}
    attention_layers = {
        k.split(".time_mix_blocks.")[0] for k in ours if ".time_mix_blocks.0.attn1" in k
    }
    assert len(attention_layers) == 16
    for layer in attention_layers:
        for k, v in ours.items():
            if k.startswith(f"{layer}.time_mix_blocks."):
                motion = v
                if ".attn2.to_k." in k or ".attn2.to_v." in k:
                    motion = (v[0], 4)  # motion context: 4-channel view latents
                assert extras.pop(k.replace(".time_mix_blocks.", ".motion_blocks.")) == motion
        width = ours[f"{layer}.proj_out.weight"][0]
        assert extras.pop(f"{layer}.time_mix_motion_embed.0.weight") == (4 * width, width)
        assert extras.pop(f"{layer}.time_mix_motion_embed.0.bias") == (4 * width,)
        assert extras.pop(f"{layer}.time_mix_motion_embed.2.weight") == (width, 4 * width)
        assert extras.pop(f"{layer}.time_mix_motion_embed.2.bias") == (width,)
        if camera:
            assert extras.pop(f"{layer}.time_mixer_motion.mix_factor") == (1,)
    assert extras == {}
