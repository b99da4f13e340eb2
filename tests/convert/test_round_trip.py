"""sgm -> diffusers -> sgm on tiny models of each family, and output parity both ways.

Export: the folder loads with ``DiffusionPipeline.from_pretrained`` and each of its
models gives our engine's outputs (1e-5 of the output scale). Import: a folder that
diffusers itself wrote, with weights diffusers drew, converts to a file our config
loads strictly, and the engine then gives the pipeline's outputs.
"""

from __future__ import annotations

import json

import pytest
import torch
from _parity import all_outputs, close
from _tiny_models import FAMILIES, randomize
from safetensors.torch import load_file

from sgm.checkpoint import load_checkpoint_into
from sgm.convert import to_diffusers, to_sgm
from sgm.convert._engine import build_engine, load_config

pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

PIPELINES = {
    "sd21": "StableDiffusionPipeline",
    "sdxl_base": "StableDiffusionXLPipeline",
    "sdxl_refiner": "StableDiffusionXLImg2ImgPipeline",
    "svd": "StableVideoDiffusionPipeline",
}


@pytest.fixture(scope="module")
def exported(engine_file, tmp_path_factory):
    cache = {}

    def make(family):
        if family not in cache:
            config, ckpt, engine = engine_file(family)
            folder = to_diffusers(ckpt, config, tmp_path_factory.mktemp(family) / "diffusers")
            cache[family] = folder
        return cache[family]

    return make


def _pipeline(folder):
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(folder, local_files_only=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_sgm_diffusers_sgm_is_identical(family, engine_file, exported, tmp_path):
    _, ckpt, _ = engine_file(family)
    config = engine_file(family)[0]
    back = to_sgm(exported(family), tmp_path / "back.safetensors", config=config)
    original, converted = load_file(ckpt), load_file(back)
    assert converted.keys() == original.keys()
    for key, value in original.items():
        assert converted[key].dtype == value.dtype, key
        assert torch.equal(converted[key], value), key


@pytest.mark.parametrize("family", FAMILIES)
def test_exported_folder_matches_our_outputs(family, engine_file, exported):
    _, _, engine = engine_file(family)
    pipe = _pipeline(exported(family))
    assert type(pipe).__name__ == PIPELINES[family]
    index = json.loads((exported(family) / "model_index.json").read_text())
    assert index["scheduler"] == ["diffusers", "EulerDiscreteScheduler"]
    for part, pairs in all_outputs(family, engine, pipe).items():
        for ours, theirs in pairs:
            close(ours, theirs)


@pytest.mark.parametrize("family", FAMILIES)
def test_diffusers_folder_imports_with_its_outputs(family, engine_file, exported, tmp_path):
    """Weights drawn on the diffusers side, saved by diffusers, read back by us."""
    config = engine_file(family)[0]
    pipe = _pipeline(exported(family))
    for i, model in enumerate(
        m for m in pipe.components.values() if isinstance(m, torch.nn.Module)
    ):
        randomize(model, seed=100 + i)
    pipe.save_pretrained(tmp_path / "theirs")
    ckpt = to_sgm(tmp_path / "theirs", tmp_path / "ours.safetensors", config=config)
    engine = build_engine(load_config(config), device="cpu").eval()
    assert load_checkpoint_into(engine, ckpt, strict=True).ok
    for part, pairs in all_outputs(family, engine, pipe).items():
        for ours, theirs in pairs:
            close(ours, theirs)


def test_scheduler_sigmas_match_the_denoiser(engine_file, exported):
    """The exported scheduler's training sigmas are those of the discrete denoiser."""
    from diffusers import EulerDiscreteScheduler

    for family in ("sd21", "sdxl_base"):
        _, _, engine = engine_file(family)
        scheduler = EulerDiscreteScheduler.from_pretrained(exported(family) / "scheduler")
        expected = scheduler.sigmas[:-1].flip(0).float()
        torch.testing.assert_close(engine.denoiser.sigmas, expected, rtol=3e-5, atol=0)
    v = EulerDiscreteScheduler.from_pretrained(exported("sd21") / "scheduler")
    assert v.config.prediction_type == "v_prediction"
    svd = EulerDiscreteScheduler.from_pretrained(exported("svd") / "scheduler")
    assert svd.config.use_karras_sigmas and svd.config.sigma_max == 700.0
    assert svd.config.prediction_type == "v_prediction"


def test_half_precision_round_trip(engine_file, tmp_path):
    """fp16 weights stay fp16 both ways, bit for bit."""
    from safetensors.torch import save_file

    config, ckpt, _ = engine_file("sdxl_refiner")
    half = {k: v.half() if v.is_floating_point() else v for k, v in load_file(ckpt).items()}
    save_file(half, tmp_path / "half.safetensors")
    folder = to_diffusers(tmp_path / "half.safetensors", config, tmp_path / "diffusers")
    back = load_file(to_sgm(folder, tmp_path / "back.safetensors", config=config))
    assert back.keys() == half.keys()
    for key, value in half.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value), key
