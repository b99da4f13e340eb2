"""The shipped video configs build a whole DiffusionEngine on the meta device.

Sampling scripts set the guider's ``num_frames`` (14 for SVD, 25 for SVD-XT, 21 for
SV3D); the test does the same. The network under ``model.diffusion_model`` has the
released layout (counted in tests/modules/diffusionmodules/test_video_model_meta.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from sgm.util import instantiate_from_config

ROOT = Path(__file__).resolve().parents[1]
VIDEO_CONFIGS = sorted(
    [
        *(ROOT / "scripts/sampling/configs").glob("*.yaml"),
        *(ROOT / "configs/inference").glob("sv*.yaml"),
    ]
)
NETWORK_KEYS = {"VideoUNet": 1428, "SpatialUNetModelWithTime": (1908, 1924)}


@pytest.mark.parametrize("path", VIDEO_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_video_config_builds_engine_on_meta(path):
    cfg = OmegaConf.load(path)
    OmegaConf.resolve(cfg)
    params = cfg.model.params
    params.pop("ckpt_path", None)
    if "sampler_config" in params:
        guider = params.sampler_config.params.guider_config.params
        guider.setdefault("num_frames", 14)
    with torch.device("meta"):
        engine = instantiate_from_config(cfg.model)
    keys = [k for k in engine.state_dict() if k.startswith("model.diffusion_model.")]
    kind = params.network_config.target.rsplit(".", 1)[1]
    expected = NETWORK_KEYS[kind]
    assert len(keys) in (expected if isinstance(expected, tuple) else (expected,))
    assert any(k.startswith("first_stage_model.decoder.") for k in engine.state_dict())
