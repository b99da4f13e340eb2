"""A checkpoint is checked against its config before the model is built: keys and shapes
from the file's header against the engine built on meta, with the strict load's verdict
and report, naming the released model a file fits instead."""

from __future__ import annotations

import json
import math
import struct

import pytest
import torch
from builders import build_engine, tiny_image_config
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from sgm.config import load_configs
from sgm.errors import CheckpointError
from sgm.inference import checkpoint_fit, engines
from sgm.inference.checkpoint_fit import check_fits, checkpoint_shapes, expected_shapes

RELEASED = checkpoint_fit.configs_root()
UNET = "model.diffusion_model."


@pytest.fixture(scope="module")
def tiny(tiny_image_clip_dir):
    """(config, engine state) of the tiny SDXL config."""
    config = tiny_image_config("sdxl_base", tiny_image_clip_dir)
    return config, build_engine(config).state_dict()


def _variants(state: dict) -> dict[str, dict]:
    """Files a user may hold: the engine's own, older layouts, and wrong ones."""
    unet = [k for k in state if k.startswith(UNET)]
    wide = dict(state)
    wide[unet[0]] = torch.zeros(*state[unet[0]].shape[:-1], state[unet[0]].shape[-1] + 1)
    legacy = {
        k.replace("conditioner.embedders.0.", "cond_stage_model."): v for k, v in state.items()
    }
    legacy["alphas_cumprod"] = torch.ones(1000)
    return {
        "same": dict(state),
        "legacy text prefix and schedule buffers": legacy,
        "with EMA weights": {**state, "model_ema.decay": torch.tensor(0.99)},
        "no position ids": {k: v for k, v in state.items() if "position_ids" not in k},
        "no network": {k: v for k, v in state.items() if k not in unet},
        "a foreign key": {**state, "foreign.weight": torch.zeros(2)},
        "one wider weight": wide,
    }


def _save(state: dict, path):
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def test_header_shapes_are_the_files_tensor_shapes(tiny, tmp_path):
    # safetensors' and torch's own readers are the oracle.
    _, state = tiny
    st = _save(state, tmp_path / "a.safetensors")
    assert checkpoint_shapes(st) == {k: tuple(v.shape) for k, v in load_file(st).items()}
    ckpt = tmp_path / "a.ckpt"
    torch.save({"state_dict": state, "global_step": 3}, ckpt)
    loaded = torch.load(ckpt, weights_only=True)["state_dict"]
    assert checkpoint_shapes(ckpt) == {k: tuple(v.shape) for k, v in loaded.items()}
    (tmp_path / "short.safetensors").write_bytes(struct.pack("<Q", 10**9) + b"{}")
    with pytest.raises(CheckpointError, match="short.safetensors: not a readable safetensors"):
        checkpoint_shapes(tmp_path / "short.safetensors")


VARIANTS = (
    "same",
    "legacy text prefix and schedule buffers",
    "with EMA weights",
    "no position ids",
    "no network",
    "a foreign key",
    "one wider weight",
)


@pytest.mark.parametrize("name", VARIANTS)
def test_the_check_agrees_with_the_strict_load(tiny, tmp_path, name):
    # Whatever the real strict load accepts passes; what it refuses fails with its report.
    config, state = tiny
    variants = _variants(state)
    assert tuple(variants) == VARIANTS
    path = _save(variants[name], tmp_path / "file.safetensors")
    engine = build_engine(config)
    try:
        engine.init_from_ckpt(str(path))
        loads, lines = True, []
    except CheckpointError as error:
        loads, lines = False, list(error.details)
    if loads:
        check_fits(config.model, path)
        return
    with pytest.raises(CheckpointError) as caught:
        check_fits(config.model, path)
    assert str(path) in str(caught.value).splitlines()[0]
    assert list(caught.value.details) == lines


def test_a_wrong_checkpoint_fails_before_the_engine_is_built(tiny, tmp_path, monkeypatch):
    config, state = tiny
    path = _save(_variants(state)["no network"], tmp_path / "wrong.safetensors")

    def built(*args, **kwargs):
        raise AssertionError("the engine was built")

    monkeypatch.setattr(engines, "instantiate_from_config", built)
    with pytest.raises(CheckpointError, match="does not match DiffusionEngine") as caught:
        engines.load_engine(config, path, "cpu")
    n_unet = sum(k.startswith(UNET) for k in state)
    assert f"{UNET[:-1]}.*: {n_unet} missing" in caught.value.details
    assert "fits none of the released models" in str(caught.value)


def _sparse_safetensors(path, shapes: dict[str, tuple[int, ...]]):
    """A valid .safetensors file of zeros (fp16) with these keys and shapes, written
    sparsely: the full-size layouts of released models without their gigabytes."""
    header, offset = {}, 0
    for key, shape in shapes.items():
        size = 2 * math.prod(shape)
        header[key] = {
            "dtype": "F16",
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(blob)) + blob)
        handle.truncate(8 + len(blob) + offset)
    return path


def test_a_file_of_another_release_is_named(tmp_path):
    # SD 2.1's layout given to the SDXL base config: the file is named as SD 2.1's.
    sd21, _ = expected_shapes(load_configs([RELEASED / "inference/sd_2_1.yaml"]).model)
    path = _sparse_safetensors(tmp_path / "v2-1.safetensors", sd21)
    assert checkpoint_shapes(path) == sd21
    sdxl = load_configs([RELEASED / "inference/sd_xl_base.yaml"])
    with pytest.raises(CheckpointError) as caught:
        check_fits(sdxl.model, path)
    first = str(caught.value).splitlines()[0]
    assert "its keys and shapes are those of sd2.1, sd2.1_768, sd_turbo" in first, first
    assert "inference/sd_2_1.yaml, inference/sd_2_1_768.yaml" in first, first
    assert any(line.startswith("conditioner.embedders.*:") for line in caught.value.details)


@pytest.mark.slow
def test_stored_layouts_are_those_of_the_packaged_configs():
    # Every packaged inference/sampling config built on meta; rewrite the table with
    # `python -m sgm.inference.checkpoint_fit` when a config changes its layout.
    assert checkpoint_fit.build_layouts() == checkpoint_fit.stored_layouts()


def test_a_packaged_config_is_checked_without_building_it(tmp_path, monkeypatch):
    # The stored state dict stands in for the meta build, and equals it.
    sdxl = load_configs([RELEASED / "inference/sd_xl_base.yaml"]).model
    built, name = expected_shapes(sdxl)
    monkeypatch.setattr(checkpoint_fit, "expected_shapes", lambda config: None)
    assert checkpoint_fit._expected(sdxl) == (built, name)
    path = _sparse_safetensors(tmp_path / "sdxl.safetensors", built)
    check_fits(sdxl, path)
    with pytest.raises(CheckpointError, match="none of the released models"):
        check_fits(sdxl, _sparse_safetensors(tmp_path / "x.safetensors", {"x": (2,)}))


def test_config_without_a_meta_build_is_left_to_the_real_build(tiny, tmp_path):
    config, state = tiny
    broken = OmegaConf.create(OmegaConf.to_container(config, resolve=True))
    broken.model.params.network_config.target = "sgm.nowhere.Network"
    assert expected_shapes(broken.model) is None
    check_fits(broken.model, _save(state, tmp_path / "x.safetensors"))
