"""Weight updates of LoRA / LoCon, DoRA, LoHa and LoKr files equal peft's layers (which
follow LyCORIS) built on the same tensors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sgm.lora import _deltas

peft = pytest.importorskip("peft")


def _layer(kind: str, config) -> nn.Module:
    base = nn.Linear(12, 20) if kind == "linear" else nn.Conv2d(8, 12, 3, padding=1)
    model = nn.Sequential(base)
    torch.manual_seed(0)
    peft.inject_adapter_in_model(config, model, adapter_name="a")
    return model[0]


def _params(layer: nn.Module, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    out = {}
    for name in names:
        holder = getattr(layer, name, None)
        if holder is not None and "a" in holder:
            out[name] = holder["a"].detach().clone()
    return out


def _randomise(layer: nn.Module) -> None:
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if "base_layer" not in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_lora_and_locon_updates_equal_peft(kind):
    layer = _layer(kind, peft.LoraConfig(r=4, lora_alpha=3.0, target_modules=["0"]))
    _randomise(layer)
    factors = {
        "lora_down.weight": layer.lora_A["a"].weight.detach(),
        "lora_up.weight": layer.lora_B["a"].weight.detach(),
    }
    ours = _deltas.delta("LoRA", factors, 3.0, layer.get_base_layer().weight.shape)
    torch.testing.assert_close(ours, layer.get_delta_weight("a"), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_dora_weight_equals_peft_merged_weight(kind):
    config = peft.LoraConfig(r=4, lora_alpha=8.0, target_modules=["0"], use_dora=True)
    layer = _layer(kind, config)
    _randomise(layer)
    base = layer.get_base_layer().weight.detach().clone()
    factors = {
        "lora_down.weight": layer.lora_A["a"].weight.detach(),
        "lora_up.weight": layer.lora_B["a"].weight.detach(),
    }
    magnitude = layer.lora_magnitude_vector["a"].weight.detach()
    dora_scale = magnitude.reshape(-1, *[1] * (base.ndim - 1))  # LyCORIS's (out, 1, ...)
    update = _deltas.delta("LoRA", factors, 8.0, base.shape)
    ours = _deltas.apply(base, update, 1.0, dora_scale)
    layer.merge()
    torch.testing.assert_close(ours, layer.get_base_layer().weight, rtol=0, atol=1e-5)
    # strength 0 is the base weight, strength s moves along the same line
    torch.testing.assert_close(_deltas.apply(base, update, 0.0, dora_scale), base)
    half = _deltas.apply(base, update, 0.5, dora_scale)
    torch.testing.assert_close(half, base + 0.5 * (ours - base), rtol=0, atol=1e-6)


LOHA = _deltas.LOHA


@pytest.mark.parametrize(("kind", "tucker"), [("linear", False), ("conv", False), ("conv", True)])
def test_loha_updates_equal_peft(kind, tucker):
    config = peft.LoHaConfig(
        r=4, alpha=6.0, target_modules=["0"], init_weights=False, use_effective_conv2d=tucker
    )
    layer = _layer(kind, config)
    factors = _params(layer, LOHA)
    assert ("hada_t1" in factors) == tucker
    ours = _deltas.delta("LoHa", factors, 6.0, layer.get_base_layer().weight.shape)
    torch.testing.assert_close(ours, layer.get_delta_weight("a"), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("kind", "r", "both", "tucker"),
    [
        ("linear", 2, False, False),  # lokr_w1 whole, w2 = w2_a @ w2_b
        ("linear", 1, True, False),  # both factors decomposed
        ("linear", 16, False, False),  # both whole: scale 1 whatever alpha
        ("conv", 1, False, False),  # conv kernel in the flattened w2_b
        ("conv", 1, False, True),  # Tucker core lokr_t2
    ],
)
def test_lokr_updates_equal_peft(kind, r, both, tucker):
    alpha = float(r) if r == 16 else 5.0
    config = peft.LoKrConfig(
        r=r,
        alpha=alpha,
        target_modules=["0"],
        init_weights=False,
        decompose_both=both,
        use_effective_conv2d=tucker,
    )
    layer = _layer(kind, config)
    factors = _params(layer, _deltas.LOKR)
    if r == 16:
        assert {"lokr_w1", "lokr_w2"} <= set(factors)
        alpha = 123.0  # ignored for whole factors, as LyCORIS writes them
    ours = _deltas.delta("LoKr", factors, alpha, layer.get_base_layer().weight.shape)
    torch.testing.assert_close(ours, layer.get_delta_weight("a"), rtol=1e-5, atol=1e-6)


def test_lora_tucker_core_equals_three_convolutions():
    """LoCon with ``lora_mid``: the update is the kernel of down (1x1) -> mid (k x k) -> up
    (1x1) run as convolutions."""
    g = torch.Generator().manual_seed(0)
    down = torch.randn(3, 8, 1, 1, generator=g)
    mid = torch.randn(3, 3, 3, 3, generator=g)
    up = torch.randn(12, 3, 1, 1, generator=g)
    x = torch.randn(2, 8, 7, 7, generator=g)
    chain = nn.functional.conv2d(nn.functional.conv2d(nn.functional.conv2d(x, down), mid), up)
    factors = {"lora_down.weight": down, "lora_mid.weight": mid, "lora_up.weight": up}
    kernel = _deltas.delta("LoRA", factors, None, torch.Size([12, 8, 3, 3]))
    torch.testing.assert_close(nn.functional.conv2d(x, kernel), chain, rtol=1e-5, atol=1e-5)
