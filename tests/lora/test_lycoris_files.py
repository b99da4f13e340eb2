"""LyCORIS files (LoHa, LoKr, DoRA, LoCon) on a UNet give the outputs of peft's layers
holding the same tensors; strengths, several files and removal."""

from __future__ import annotations

import copy

import pytest
import torch
from lora_tiny import randomize, unet, unet_inputs
from safetensors.torch import save_file

from sgm.lora import load_lora, lora_names, remove_lora, set_lora_scale

peft = pytest.importorskip("peft")

LINEAR = ["attn1.to_q", "attn2.to_k", "attn2.to_out.0", "ff.net.2", "proj_in"]
CONV = ["in_layers.2", "out_layers.3", "op"]


def _peft_twin(network, config, adapter="x", seed=9):
    twin = copy.deepcopy(network) if adapter == "x" else network
    torch.manual_seed(5)
    peft.inject_adapter_in_model(config, twin, adapter_name=adapter)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in twin.named_parameters():
            if f".{adapter}." in name or name.endswith(f".{adapter}"):
                p.copy_(
                    torch.randn(p.shape, generator=g) * 0.2 + (1.0 if "magnitude" in name else 0)
                )
    return twin.eval()


def _file(twin, names, alpha_of, path, dora=False, adapter="x"):
    """The twin's adapter tensors in LyCORIS's key layout."""
    out = {}
    for module, layer in twin.named_modules():
        if not hasattr(layer, "get_base_layer") or module.endswith("base_layer"):
            continue
        key = "lora_unet_" + module.replace(".", "_")
        found = False
        for name in names:
            holder = getattr(layer, name.split(".")[0], None)
            if holder is not None and adapter in holder:
                value = holder[adapter]
                value = value.weight if isinstance(value, torch.nn.Module) else value
                out[f"{key}.{_file_name(name)}"] = value.detach().clone()
                found = True
        if found:
            out[f"{key}.alpha"] = torch.tensor(alpha_of(layer))
            if dora:
                weight = layer.get_base_layer().weight
                magnitude = layer.lora_magnitude_vector["x"].weight.detach()
                out[f"{key}.dora_scale"] = magnitude.reshape(-1, *[1] * (weight.ndim - 1))
    save_file(out, str(path))
    return path


def _file_name(name):
    return {"lora_A": "lora_down.weight", "lora_B": "lora_up.weight"}.get(name, name)


def _compare(network, twin, path):
    x, t, context = unet_inputs()
    with torch.no_grad():
        base = network(x, t, context)
        load_lora(network, path)
        ours, theirs = network(x, t, context), twin(x, t, context)
    scale = float(theirs.abs().max())
    torch.testing.assert_close(ours, theirs, atol=1e-5 * scale, rtol=0)
    assert (ours - base).abs().max() > 1e-3 * scale


def test_loha_file_equals_peft_loha(tmp_path):
    network = unet()
    config = peft.LoHaConfig(r=4, alpha=3.0, target_modules=LINEAR + CONV)
    twin = _peft_twin(network, config)
    names = ["hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"]
    _compare(network, twin, _file(twin, names, lambda layer: 3.0, tmp_path / "loha.safetensors"))


@pytest.mark.parametrize("tucker", [False, True])
def test_lokr_file_equals_peft_lokr(tmp_path, tucker):
    network = unet()
    config = peft.LoKrConfig(
        r=2, alpha=3.0, target_modules=LINEAR + CONV, use_effective_conv2d=tucker
    )
    twin = _peft_twin(network, config)

    def alpha(layer):  # LyCORIS: factors both whole -> scale 1 (alpha == rank)
        return 3.0 if (layer.lokr_w1_a or layer.lokr_w2_a) else 2.0

    names = ["lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"]
    _compare(network, twin, _file(twin, names, alpha, tmp_path / "lokr.safetensors"))


@pytest.mark.parametrize("dora", [False, True])
def test_locon_and_dora_files_equal_peft_lora(tmp_path, dora):
    network = unet()
    config = peft.LoraConfig(r=3, lora_alpha=6.0, target_modules=LINEAR + CONV, use_dora=dora)
    twin = _peft_twin(network, config)
    path = _file(twin, ["lora_A", "lora_B"], lambda layer: 6.0, tmp_path / "l.safetensors", dora)
    _compare(network, twin, path)


def test_strength_several_files_and_removal(tmp_path):
    """Two files at their strengths equal one peft model holding both adapters, scaled."""
    network = unet()
    original = {k: v.clone() for k, v in network.state_dict().items()}
    twin = copy.deepcopy(network)
    names = ["hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"]
    paths = []
    for i, (adapter, r) in enumerate((("one", 2), ("two", 3))):
        config = peft.LoHaConfig(r=r, alpha=float(r), target_modules=LINEAR)
        _peft_twin(twin, config, adapter, seed=i)
        path = tmp_path / f"{adapter}.safetensors"
        paths.append(_file(twin, names, lambda layer, r=r: float(r), path, adapter=adapter))
    for module in twin.modules():
        if hasattr(module, "hada_w1_a") and module.hada_w1_a:
            module.set_adapter(["one", "two"])
            module.set_scale("one", 0.5)
            module.set_scale("two", 2.0)
    x, t, context = unet_inputs()
    with torch.no_grad():
        load_lora(network, paths[0], scale=0.5, name="one")
        load_lora(network, paths[1], scale=1.0, name="two")
        set_lora_scale(network, 2.0, "two")
        ours, theirs = network(x, t, context), twin(x, t, context)
    assert lora_names(network) == ["one", "two"]
    torch.testing.assert_close(ours, theirs, atol=1e-5 * float(theirs.abs().max()), rtol=0)
    remove_lora(network, "one")
    remove_lora(network)
    for key, value in network.state_dict().items():
        assert torch.equal(value, original[key]), key


def test_video_unet_kohya_file_with_temporal_layers_equals_peft(tmp_path):
    """SVD's network: kohya names of its own modules, temporal layers included."""
    from test_lora_training import VIDEO

    from sgm.util import instantiate_from_config

    torch.manual_seed(0)
    network = randomize(instantiate_from_config(VIDEO))
    targets = [n for n, m in network.named_modules() if isinstance(m, torch.nn.Linear)]
    targets = [n for n in targets if "time_stack" in n or "attn2.to_out" in n][:12]
    assert any("time_stack" in n for n in targets)
    twin = _peft_twin(network, peft.LoraConfig(r=2, lora_alpha=4.0, target_modules=targets))
    path = _file(twin, ["lora_A", "lora_B"], lambda layer: 4.0, tmp_path / "svd.safetensors")
    x = torch.randn(2, 8, 8, 8, generator=torch.Generator().manual_seed(2))
    kwargs = dict(
        context=torch.randn(2, 1, 32, generator=torch.Generator().manual_seed(3)),
        y=torch.randn(2, 768, generator=torch.Generator().manual_seed(4)),
        num_video_frames=2,
        image_only_indicator=torch.zeros(1, 2),
    )
    t = torch.tensor([1.0, 2.0])
    with torch.no_grad():
        base = network(x, t, **kwargs)
        load_lora(network, path)
        ours, theirs = network(x, t, **kwargs), twin(x, t, **kwargs)
    scale = float(theirs.abs().max())
    torch.testing.assert_close(ours, theirs, atol=1e-5 * scale, rtol=0)
    assert (ours - base).abs().max() > 1e-3 * scale
