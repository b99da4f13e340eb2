"""Tiny random-weight models under the released file names, for the demo pages."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "inference"))

# tiny config kind -> (released config name, released checkpoint names)
IMAGE_MODELS = {
    "sdxl_base": ("sd_xl_base.yaml", ["sd_xl_base_1.0.safetensors", "sd_xl_turbo_1.0.safetensors"]),
    "sdxl_refiner": ("sd_xl_refiner.yaml", ["sd_xl_refiner_1.0.safetensors"]),
    "sd_2_1": ("sd_2_1.yaml", ["v2-1_512-ema-pruned.safetensors", "sd_turbo.safetensors"]),
}


@pytest.fixture(scope="session")
def tiny_image_models(tmp_path_factory) -> dict[str, Path]:
    """{"checkpoints": folder, "configs": folder}: tiny SDXL base, refiner and SD 2.1
    configs under the released config names, random weights under the released
    checkpoint names (the Turbo files share the base/SD 2.1 weights)."""
    from tiny_image_models import make_clip_folder, write_tiny_model

    root = tmp_path_factory.mktemp("demo_image_models")
    clip = make_clip_folder(root / "clip")
    checkpoints, configs = root / "checkpoints", root / "configs"
    configs.mkdir()
    for seed, (kind, (config_name, ckpt_names)) in enumerate(IMAGE_MODELS.items()):
        config, ckpt = write_tiny_model(kind, clip, checkpoints, ckpt_names[0], seed=seed)
        shutil.move(str(config), configs / config_name)
        for other in ckpt_names[1:]:
            shutil.copyfile(ckpt, checkpoints / other)
    return {"checkpoints": checkpoints, "configs": configs}
