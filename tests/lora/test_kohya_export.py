"""Adapters trained here, written in kohya's layout: names, the round trip back (exact),
and the same outputs when the file is loaded for sampling."""

from __future__ import annotations

import pytest
import torch
from lora_tiny import unet, unet_inputs
from safetensors import safe_open
from test_lora_adapters import train_adapter

from sgm.errors import ConfigError
from sgm.lora import add_lora, load_lora, lora_names, lora_state_dict, save_lora
from sgm.lora._kohya_names import kohya_targets

CONV = ["attn1.to_q", "attn2.to_v", "ff.net.2", "in_layers.2", "op"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    net = train_adapter(unet(), target_modules=CONV)
    path = save_lora(net, tmp_path_factory.mktemp("k") / "tiny.safetensors", format="kohya")
    return net, path


def _read(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_kohya_file_holds_down_up_alpha_under_kohya_names(trained):
    net, path = trained
    tensors, header = _read(path)
    peft = lora_state_dict(net)  # diffusers-layout export, alpha / rank folded in B
    layers = {k.rsplit(".", 2)[0] for k in tensors if k.endswith("lora_down.weight")}
    assert layers and layers <= set(kohya_targets(net))
    assert len(layers) == len([k for k in peft if k.endswith("lora_A.weight")])
    for layer in layers:
        assert float(tensors[f"{layer}.alpha"]) == 8.0
        assert tensors[f"{layer}.lora_down.weight"].shape[0] == 4
    assert header["ss_network_dim"] == "4" and header["ss_network_alpha"] == "8.0"
    assert any(k.startswith("lora_unet_input_blocks_2_0_op.") for k in tensors)  # LoCon


def test_round_trip_is_exact(trained):
    """ours -> kohya file -> ours (a new trainable adapter started from the file)."""
    net, path = trained
    back = unet()
    add_lora(back, {"rank": 4, "alpha": 8, "target_modules": CONV, "init_from": str(path)})
    ours = dict(net.named_parameters())
    theirs = dict(back.named_parameters())
    adapter = [k for k in ours if ".lora_" in k]
    assert adapter and set(adapter) == {k for k in theirs if ".lora_" in k}
    for key in adapter:
        assert torch.equal(ours[key], theirs[key]), key


def test_loaded_for_sampling_gives_the_trained_outputs(trained):
    net, path = trained
    x, t, context = unet_inputs()
    fresh = unet()
    with torch.no_grad():
        base = fresh(x, t, context)
        load_lora(fresh, path)
        expected, got = net(x, t, context), fresh(x, t, context)
    scale = float(expected.abs().max())
    torch.testing.assert_close(got, expected, atol=1e-5 * scale, rtol=0)
    assert (got - base).abs().max() > 1e-2 * scale
    assert lora_names(fresh) == ["lora0"]


def test_unknown_format_is_refused(trained, tmp_path):
    with pytest.raises(ConfigError, match="format must be one of"):
        save_lora(trained[0], tmp_path / "x.safetensors", format="a1111")


def test_lora_export_callback_writes_kohya_files(trained, tmp_path):
    from types import SimpleNamespace

    from sgm.lora.training import LoraExport

    net, path = trained
    export = LoraExport(every_n_train_steps=5, dirpath=str(tmp_path), format="kohya")
    trainer = SimpleNamespace(is_global_zero=True, global_step=10)
    export.on_train_batch_end(trainer, net)
    assert [p.name for p in export.written] == ["step-0000010.kohya.safetensors"]
    written, _ = _read(export.written[0])
    original, _ = _read(path)
    assert written.keys() == original.keys()
    assert all(torch.equal(written[k], original[k]) for k in original)
    with pytest.raises(ConfigError, match="LoraExport.format"):
        LoraExport(format="comfy")
