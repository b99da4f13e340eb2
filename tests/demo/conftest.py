"""Tiny random-weight models under the released file names, for the demo pages."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from builders import save_state, write_tiny_model

# tiny config kind -> (released config name, released checkpoint names)
IMAGE_MODELS = {
    "sdxl_base": ("sd_xl_base.yaml", ["sd_xl_base_1.0.safetensors", "sd_xl_turbo_1.0.safetensors"]),
    "sdxl_refiner": ("sd_xl_refiner.yaml", ["sd_xl_refiner_1.0.safetensors"]),
    "sd_2_1": ("sd_2_1.yaml", ["v2-1_512-ema-pruned.safetensors", "sd_turbo.safetensors"]),
}


@pytest.fixture(scope="session")
def tiny_image_models(tmp_path_factory, tiny_image_clip_dir) -> dict[str, Path]:
    """{"checkpoints": folder, "configs": folder}: tiny SDXL base, refiner and SD 2.1
    configs under the released config names, random weights under the released
    checkpoint names (the Turbo files share the base/SD 2.1 weights)."""
    root = tmp_path_factory.mktemp("demo_image_models")
    clip = tiny_image_clip_dir
    checkpoints, configs = root / "checkpoints", root / "configs"
    configs.mkdir()
    for seed, (kind, (config_name, ckpt_names)) in enumerate(IMAGE_MODELS.items()):
        config, ckpt = write_tiny_model(kind, clip, checkpoints, ckpt_names[0], seed=seed)
        shutil.move(str(config), configs / config_name)
        for other in ckpt_names[1:]:
            shutil.copyfile(ckpt, checkpoints / other)
    return {"checkpoints": checkpoints, "configs": configs}


@pytest.fixture(scope="session")
def tiny_video_models(tmp_path_factory, video_arch_dir) -> dict[str, Path]:
    """{"checkpoints", "configs"}: tests/configs/video_tiny_svd.yaml (its toy CLIP arch
    registered with open_clip) as svd_xt.yaml and svd_xt_1_1.yaml, random weights under
    both released checkpoint names."""
    import torch
    from builders import CONFIGS

    from sgm.inference.video import load_video_model

    root = tmp_path_factory.mktemp("demo_video_models")
    config = CONFIGS / "video_tiny_svd.yaml"
    torch.manual_seed(0)
    model = load_video_model(config, None, "cpu", num_frames=3, num_steps=2)
    checkpoints, configs = root / "checkpoints", root / "configs"
    configs.mkdir()
    for version in ("svd_xt", "svd_xt_1_1"):
        save_state(model, checkpoints / f"{version}.safetensors")
        shutil.copyfile(config, configs / f"{version}.yaml")
    return {"checkpoints": checkpoints, "configs": configs}
