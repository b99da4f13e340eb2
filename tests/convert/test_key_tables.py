"""Key tables traced from forward converters: exact inverse, bijection check, and the
released-config choice from a folder's JSON files."""

from __future__ import annotations

import json

import pytest
import torch

from sgm.convert import released_config, svd_unet_key_map, video_decoder_key_map
from sgm.convert._probe import check_bijection, invert, trace
from sgm.errors import CheckpointError, InputError

pytest.importorskip("diffusers")

PREFIX = "conditioner.embedders.1.model."


def _open_clip_text_state(gen: torch.Generator) -> dict[str, torch.Tensor]:
    width = 8
    state = {
        "positional_embedding": torch.randn(77, width, generator=gen),
        "token_embedding.weight": torch.randn(49408, width, generator=gen),
        "ln_final.weight": torch.randn(width, generator=gen),
        "ln_final.bias": torch.randn(width, generator=gen),
        "text_projection": torch.randn(width, width, generator=gen),  # square: .T matters
    }
    for i in range(2):
        block = f"transformer.resblocks.{i}."
        state[block + "attn.in_proj_weight"] = torch.randn(3 * width, width, generator=gen)
        state[block + "attn.in_proj_bias"] = torch.randn(3 * width, generator=gen)
        state[block + "ln_1.weight"] = torch.randn(width, generator=gen)
        state[block + "mlp.c_fc.weight"] = torch.randn(4 * width, width, generator=gen)
    return {PREFIX + k: v for k, v in state.items()}


def _convert(state):
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    return convert_open_clip_checkpoint(None, state, prefix=PREFIX)


def test_inverse_of_diffusers_open_clip_converter_is_exact():
    state = _open_clip_text_state(torch.Generator().manual_seed(0))
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    table = trace(_convert, shapes)
    converted = _convert(dict(state))
    assert set(table) == set(converted)
    q = table["text_model.encoder.layers.0.self_attn.q_proj.weight"]
    assert q.source == PREFIX + "transformer.resblocks.0.attn.in_proj_weight" and q.ops
    assert table["text_projection.weight"].ops  # the transpose was recorded
    check_bijection(table, shapes, unplaced=set())
    back = invert(table, converted, shapes)
    assert back.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(back[key], value), key


def test_bijection_check_catches_overlap_and_gaps():
    shapes = {"w": (6, 2)}

    def overlapping(state):
        w = state["w"]
        return {"a": w[:4], "b": w[2:]}

    def gappy(state):
        return {"a": state["w"][:3]}

    with pytest.raises(CheckpointError, match="exactly once"):
        check_bijection(trace(overlapping, shapes), shapes, unplaced=set())
    with pytest.raises(CheckpointError, match="exactly once"):
        check_bijection(trace(gappy, shapes), shapes, unplaced=set())
    with pytest.raises(CheckpointError, match="no converted key"):
        check_bijection(trace(gappy, {**shapes, "v": (1,)}), {**shapes, "v": (1,)}, set())


def test_outputs_mixing_two_sources_are_refused():
    def mixing(state):
        return {"ab": torch.cat([state["a"], state["b"]])}

    with pytest.raises(CheckpointError, match="one source key"):
        trace(mixing, {"a": (2,), "b": (2,)})


def test_library_maps_reject_unknown_keys():
    unet, decoder = svd_unet_key_map(2), video_decoder_key_map(4)
    assert unet("input_blocks.3.0.op.weight") == "down_blocks.0.downsamplers.0.conv.weight"
    assert decoder("up.0.upsample.conv.bias") == "up_blocks.3.upsamplers.0.conv.bias"
    with pytest.raises(KeyError):
        svd_unet_key_map(2)("something.else.weight")
    with pytest.raises(KeyError):
        video_decoder_key_map(4)("mid.block_3.norm1.weight")


def _folder(tmp_path, pipeline, **components):
    index = {"_class_name": pipeline}
    for name, config in components.items():
        (tmp_path / name).mkdir()
        filename = "scheduler_config.json" if name == "scheduler" else "config.json"
        (tmp_path / name / filename).write_text(json.dumps(config))
        index[name] = ["x", "y"]
    if pipeline == "StableDiffusionXLImg2ImgPipeline" and "text_encoder" not in components:
        index["text_encoder"] = [None, None]
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    return tmp_path


@pytest.mark.parametrize(
    "pipeline, components, expected",
    [
        (
            "StableDiffusionPipeline",
            {"text_encoder": {"hidden_size": 1024}, "scheduler": {"prediction_type": "epsilon"}},
            "sd_2_1",
        ),
        (
            "StableDiffusionPipeline",
            {
                "text_encoder": {"hidden_size": 1024},
                "scheduler": {"prediction_type": "v_prediction"},
            },
            "sd_2_1_768",
        ),
        ("StableDiffusionXLPipeline", {"text_encoder": {}}, "sd_xl_base"),
        ("StableDiffusionXLImg2ImgPipeline", {}, "sd_xl_refiner"),
        ("StableVideoDiffusionPipeline", {"unet": {"num_frames": 14}}, "svd"),
        ("StableVideoDiffusionPipeline", {"unet": {"num_frames": 25}}, "svd_xt"),
    ],
)
def test_released_config_follows_the_folder(tmp_path, pipeline, components, expected):
    path = released_config(_folder(tmp_path, pipeline, **components))
    assert path.name == f"{expected}.yaml" and path.is_file()


def test_released_config_refuses_other_pipelines(tmp_path):
    with pytest.raises(InputError, match="KandinskyPipeline"):
        released_config(_folder(tmp_path, "KandinskyPipeline"))
