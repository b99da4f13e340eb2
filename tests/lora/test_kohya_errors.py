"""Bad adapter files: one-line ``CheckpointError`` naming the file and the culprit, raised
before anything changes."""

from __future__ import annotations

import pytest
import torch
from lora_tiny import unet, unet_inputs
from safetensors.torch import save_file

from sgm.errors import CheckpointError
from sgm.lora import apply_lora_specs, load_lora, lora_names

Q = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q"  # (32, 32) in the tiny UNet


def _save(path, tensors, metadata=None):
    save_file(tensors, str(path), metadata=metadata)
    return path


def _lora(layer=Q, rank=2, rows=32, cols=32):
    g = torch.Generator().manual_seed(0)
    return {
        f"{layer}.lora_down.weight": torch.randn(rank, cols, generator=g),
        f"{layer}.lora_up.weight": torch.randn(rows, rank, generator=g),
        f"{layer}.alpha": torch.tensor(1.0),
    }


def _refused(path, match):
    network = unet()
    state = {k: v.clone() for k, v in network.state_dict().items()}
    good = _save(path.parent / "good.safetensors", _lora())
    with pytest.raises(CheckpointError, match=match) as err:
        apply_lora_specs(network, [(good, 1.0), (path, 1.0)])
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert lora_names(network) == []  # the good file was not applied either
    for key, value in network.state_dict().items():
        assert torch.equal(value, state[key]), key
    return message


def test_a_good_file_loads(tmp_path):
    network = unet()
    x, t, c = unet_inputs()
    with torch.no_grad():
        base = network(x, t, c)
        load_lora(network, _save(tmp_path / "good.safetensors", _lora()))
        assert not torch.allclose(network(x, t, c), base)


def test_keys_matching_no_layer_are_listed_with_what_they_could_match(tmp_path):
    tensors = _lora()
    for i in range(7):
        tensors |= _lora(f"lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_qq{i}")
    message = _refused(
        _save(tmp_path / "typo.safetensors", tensors), "7 adapter layers match no layer"
    )
    assert "to_qq0 (closest here: " + Q + ")" in message
    assert "and 2 more" in message


def test_sd15_file_names_the_model_it_was_made_for(tmp_path):
    tensors = _lora("lora_te_text_model_encoder_layers_0_self_attn_q_proj", rows=768, cols=768)
    tensors |= _lora(
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k", rows=640, cols=768
    )
    path = _save(tmp_path / "sd15.safetensors", tensors, {"ss_base_model_version": "sd_v1"})
    message = _refused(path, "match no layer of this UNetModel")
    assert "made for sd_v1; SD 1.x, cross-attention width 768" in message


def test_same_names_other_widths_say_which_layer_does_not_fit(tmp_path):
    tensors = _lora(rows=768, cols=768)
    message = _refused(_save(tmp_path / "wide.safetensors", tensors), "does not fit")
    assert "input_blocks.1.1.transformer_blocks.0.attn1.to_q (32, 32)" in message


def test_mixed_formats_in_one_file(tmp_path):
    tensors = _lora() | {
        "unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": torch.zeros(2, 32),
        "unet.down_blocks.0.attentions.0.proj_in.lora_B.weight": torch.zeros(32, 2),
    }
    message = _refused(_save(tmp_path / "mixed.safetensors", tensors), "mixes adapter formats")
    assert "lora_A.weight" in message and Q in message


def test_mixed_adapter_types_on_one_layer(tmp_path):
    tensors = _lora() | {f"{Q}.hada_w1_a": torch.zeros(32, 2)}
    _refused(_save(tmp_path / "both.safetensors", tensors), "holds LoRA and LoHa tensors")


def test_rank_mismatch_between_down_and_up(tmp_path):
    tensors = _lora()
    tensors[f"{Q}.lora_up.weight"] = torch.zeros(32, 3)
    message = _refused(_save(tmp_path / "rank.safetensors", tensors), "rank mismatch")
    assert "lora_down (2, 32) has rank 2 but lora_up (32, 3) has rank 3" in message


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_weights(tmp_path, bad):
    tensors = _lora()
    tensors[f"{Q}.lora_up.weight"][3, 1] = bad
    message = _refused(_save(tmp_path / "nan.safetensors", tensors), "NaN or infinite")
    assert f"{Q}.lora_up.weight" in message


def test_truncated_file(tmp_path):
    whole = _save(tmp_path / "whole.safetensors", _lora())
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(whole.read_bytes()[:-100])
    _refused(cut, "not a readable .safetensors file")


@pytest.mark.parametrize(
    ("suffix", "kind"), [("oft_blocks", "OFT"), ("diff", r"full \(diff\)"), ("w_norm", "norm")]
)
def test_unsupported_lycoris_type_is_named(tmp_path, suffix, kind):
    tensors = {f"{Q}.{suffix}": torch.zeros(4, 8, 8), f"{Q}.alpha": torch.tensor(1.0)}
    message = _refused(_save(tmp_path / "oft.safetensors", tensors), f"LyCORIS type {kind}")
    assert "is not supported" in message


def test_unknown_tensor_name(tmp_path):
    tensors = {f"{Q}.lora_sideways.weight": torch.zeros(2, 32)}
    _refused(_save(tmp_path / "odd.safetensors", tensors), "unknown adapter tensor")


def test_incomplete_layer_and_bad_dora_scale(tmp_path):
    tensors = {f"{Q}.hada_w1_a": torch.zeros(32, 2), f"{Q}.hada_w1_b": torch.zeros(2, 32)}
    _refused(_save(tmp_path / "half.safetensors", tensors), "LoHa layer .* lacks")
    tensors = _lora() | {f"{Q}.dora_scale": torch.ones(7, 1)}
    _refused(_save(tmp_path / "dora.safetensors", tensors), "dora_scale")
