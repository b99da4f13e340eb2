"""Tiny engines of each family (SD 2.x, SDXL base/refiner, SVD) with random weights."""

from __future__ import annotations

from pathlib import Path

import pytest
from _tiny_models import FAMILIES, randomize
from builders import open_clip_arch, refuse_network, register_open_clip, write_tiny_clip
from omegaconf import OmegaConf

CONFIGS = Path(__file__).resolve().parent / "configs"
ARCHS = {
    "sgm-test-convert-text": open_clip_arch(embed_dim=32, text_layers=3, vision_layers=2),
    "sgm-test-convert-bigg": open_clip_arch(embed_dim=48, text_layers=3, vision_layers=2),
    "sgm-test-convert-vision": open_clip_arch(embed_dim=32, text_layers=3, vision_layers=2),
}


@pytest.fixture(autouse=True, scope="module")
def offline():
    """Opening a socket fails the test; the Hub is offline (per module: later test folders
    that serve pages on localhost must not inherit it)."""
    with pytest.MonkeyPatch.context() as patch:
        refuse_network(patch)
        yield


@pytest.fixture(scope="session")
def archs(tmp_path_factory):
    return register_open_clip(tmp_path_factory.mktemp("convert_open_clip"), ARCHS)


@pytest.fixture(scope="session")
def clip_l_dir(tmp_path_factory):
    """A tiny CLIP-L-like text model architecture (config.json only)."""
    folder = tmp_path_factory.mktemp("tiny_clip_l")
    return write_tiny_clip(folder, layers=3, tokenizer=False, weights=False, projection_dim=32)


@pytest.fixture(scope="session")
def config_path(archs, clip_l_dir, tmp_path_factory):
    """``config_path(family)`` -> a tiny config file (the CLIP-L folder filled in)."""
    folder = tmp_path_factory.mktemp("convert_configs")

    def make(family: str) -> Path:
        config = OmegaConf.load(CONFIGS / f"tiny_{family}.yaml")
        if family == "sdxl_base":
            config.model.params.conditioner_config.params.emb_models[0].params.version = str(
                clip_l_dir
            )
        path = folder / f"tiny_{family}.yaml"
        OmegaConf.save(config, path)
        return path

    return make


@pytest.fixture(scope="session")
def engine_file(config_path, tmp_path_factory):
    """``engine_file(family)`` -> (config path, checkpoint path, engine) with random
    weights; SVD's two copies of the image encoder are equal, as in released files."""
    from safetensors.torch import save_file

    from sgm.convert._engine import build_engine, load_config

    cache = {}

    def make(family: str):
        if family not in cache:
            path = config_path(family)
            engine = build_engine(load_config(path), device="cpu").eval()
            randomize(engine, seed=FAMILIES.index(family))
            state = engine.state_dict()
            if family == "svd":
                for key in [k for k in state if k.startswith("first_stage_model.encoder.")]:
                    twin = "conditioner.embedders.3.encoder." + key[len("first_stage_model.") :]
                    state[key].copy_(state[twin])
            ckpt = tmp_path_factory.mktemp(f"ckpt_{family}") / f"{family}.safetensors"
            save_file({k: v.contiguous() for k, v in state.items()}, ckpt)
            cache[family] = (path, ckpt, engine)
        return cache[family]

    return make
