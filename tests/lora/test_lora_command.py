"""``scripts/lora.py inspect``: what a file holds, read back from files of known content."""

from __future__ import annotations

import json

import torch
from safetensors.torch import save_file

from sgm.commands.lora import main

Q = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q"
TE = "lora_te2_text_model_encoder_layers_0_self_attn_q_proj"


def _loha(tmp_path):
    tensors = {}
    for layer, rank in ((Q, 4), (TE, 8)):
        tensors |= {
            f"{layer}.hada_w1_a": torch.zeros(32, rank),
            f"{layer}.hada_w1_b": torch.zeros(rank, 32),
            f"{layer}.hada_w2_a": torch.zeros(32, rank),
            f"{layer}.hada_w2_b": torch.zeros(rank, 32),
            f"{layer}.alpha": torch.tensor(float(rank) / 2),
            f"{layer}.dora_scale": torch.ones(32, 1),
        }
    meta = {"ss_base_model_version": "sdxl_base_v1-0", "ss_output_name": "style", "ss_seed": "1"}
    path = tmp_path / "style.safetensors"
    save_file(tensors, str(path), metadata=meta)
    return path


def test_inspect_prints_format_type_rank_alpha_targets_base_and_metadata(tmp_path, capsys):
    path = _loha(tmp_path)
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "format      kohya / A1111 / ComfyUI" in text
    assert "types       LoHa (2 layers), DoRA (2 layers)" in text
    assert "rank        4, 8" in text and "alpha       2, 4" in text
    assert "targets     network: 1 layers, text encoder 2: 1 layers" in text
    assert "base model  sdxl_base_v1-0" in text
    assert "  ss_output_name: style" in text and "  ss_seed: 1" in text


def test_inspect_json_and_a_diffusers_file(tmp_path, capsys):
    path = tmp_path / "d.safetensors"
    key = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    save_file(
        {f"{key}.lora_A.weight": torch.zeros(6, 2048), f"{key}.lora_B.weight": torch.zeros(640, 6)},
        str(path),
        metadata={"lora_adapter_metadata": json.dumps({"lora_alpha": 3})},
    )
    assert main(["inspect", "--json", str(path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "diffusers / peft" and info["types"] == {"LoRA": 1}
    assert info["ranks"] == [6] and info["alphas"] == [3.0]
    assert info["base_model"] == "SDXL, cross-attention width 2048"


def test_inspect_of_a_bad_file_is_one_line_and_status_2(tmp_path, capsys):
    path = _loha(tmp_path)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:50])
    assert main(["inspect", str(cut)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "cut.safetensors" in err
