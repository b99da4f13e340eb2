"""GeneralConditioner: routing, concatenation order, dropout, zeroing, unconditional batch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sgm.errors import ConfigError, InputError
from sgm.modules import GeneralConditioner

MODULES = "sgm.modules.encoders.modules."


def cte(key, outdim=256, **extra):
    return {
        "target": MODULES + "ConcatTimestepEmbedderND",
        "params": {"outdim": outdim},
        "input_key": key,
        **extra,
    }


def sinusoid(values, dim):
    """Closed form [cos(v f_i), sin(v f_i)], f_i = 10000^(-i / (dim/2)), per column."""
    values = np.asarray(values, dtype=np.float64)
    half = dim // 2
    freqs = np.exp(-math.log(10000) * np.arange(half) / half)
    args = values[..., None] * freqs
    emb = np.concatenate([np.cos(args), np.sin(args)], axis=-1)
    return torch.tensor(emb.reshape(values.shape[0], -1), dtype=torch.float32)


@pytest.fixture(scope="module")
def sdxl_like(clip_dir, tiny_arch):
    """The SDXL base embedder set with tiny text towers (bigG's 1280-wide pooled output)."""
    config = [
        {
            "target": MODULES + "FrozenCLIPEmbedder",
            "params": {"version": str(clip_dir), "layer": "hidden", "layer_idx": 2},
            "input_key": "txt",
        },
        {
            "target": MODULES + "FrozenOpenCLIPEmbedder2",
            "params": {
                "arch": "sgm-test-tiny-g",
                "layer": "penultimate",
                "always_return_pooled": True,
                "legacy": False,
            },
            "input_key": "txt",
        },
        cte("original_size_as_tuple"),
        cte("crop_coords_top_left"),
        cte("target_size_as_tuple"),
    ]
    return GeneralConditioner(config)


def sdxl_batch(n=2):
    return {
        "txt": ["a photo of a cat", "a dog"][:n],
        "original_size_as_tuple": torch.tensor([[1024.0, 768.0], [512.0, 512.0]])[:n],
        "crop_coords_top_left": torch.tensor([[0.0, 0.0], [16.0, 32.0]])[:n],
        "target_size_as_tuple": torch.tensor([[1024.0, 1024.0], [512.0, 512.0]])[:n],
    }


@torch.no_grad()
def test_sdxl_routing_and_order(sdxl_like):
    batch = sdxl_batch()
    out = sdxl_like(batch)
    assert set(out) == {"crossattn", "vector"}
    clip, bigg = sdxl_like.embedders[0], sdxl_like.embedders[1]
    assert out["crossattn"].shape == (2, 77, 32 + 64)
    assert out["vector"].shape == (2, 1280 + 6 * 256) == (2, 2816)
    torch.testing.assert_close(out["crossattn"][..., :32], clip(batch["txt"]))
    tokens, pooled = bigg(batch["txt"])
    torch.testing.assert_close(out["crossattn"][..., 32:], tokens)
    torch.testing.assert_close(out["vector"][:, :1280], pooled)
    for i, key in enumerate(
        ["original_size_as_tuple", "crop_coords_top_left", "target_size_as_tuple"]
    ):
        part = out["vector"][:, 1280 + 512 * i : 1280 + 512 * (i + 1)]
        # fp32 phases of values ~1000 carry errors ~1000 * 2**-24 * ... (< 1e-4).
        torch.testing.assert_close(part, sinusoid(batch[key].numpy(), 256), atol=1e-4, rtol=0)


def test_frozen_embedders(sdxl_like):
    sdxl_like.train()
    assert not any(e.training for e in sdxl_like.embedders)
    assert not any(p.requires_grad for p in sdxl_like.parameters())
    trainable = GeneralConditioner(
        [
            {
                "target": MODULES + "ClassEmbedder",
                "params": {"embed_dim": 8, "n_classes": 10},
                "input_key": "cls",
                "is_trainable": True,
            }
        ]
    )
    out = trainable({"cls": torch.tensor([1, 2])})
    assert out["vector"].requires_grad


def test_dim_routing_and_passthrough_keys():
    config = [
        {"target": MODULES + "IdentityEncoder", "input_key": k}
        for k in ("a", "cond_view", "cond_motion", "c", "b")
    ]
    conditioner = GeneralConditioner(config)
    batch = {
        "a": torch.randn(2, 3, 4, 4),
        "b": torch.randn(2, 1, 4, 4),
        "cond_view": torch.randn(2, 4, 4, 4),
        "cond_motion": torch.randn(2, 4, 4, 4),
        "c": torch.randn(2, 5, 6),
    }
    out = conditioner(batch)
    assert set(out) == {"concat", "cond_view", "cond_motion", "crossattn"}
    torch.testing.assert_close(out["concat"], torch.cat([batch["a"], batch["b"]], 1))
    torch.testing.assert_close(out["cond_view"], batch["cond_view"])
    torch.testing.assert_close(out["cond_motion"], batch["cond_motion"])
    torch.testing.assert_close(out["crossattn"], batch["c"])
    video = GeneralConditioner([config[0]])({"a": torch.randn(2, 3, 5, 4, 4)})
    assert video["concat"].shape == (2, 3, 5, 4, 4)
    with pytest.raises(InputError, match="1-D"):
        GeneralConditioner([config[0]])({"a": torch.randn(2)})


def test_ucg_dropout_statistics():
    n, rate = 4000, 0.3
    conditioner = GeneralConditioner([cte("x", 8, ucg_rate=rate), cte("y", 8, ucg_rate=0.6)])
    values = torch.rand(n) * 100 + 1
    out = conditioner({"x": values, "y": values})["vector"]
    full = sinusoid(values.numpy(), 8)
    dropped_x = out[:, :8].abs().sum(1) == 0
    dropped_y = out[:, 8:].abs().sum(1) == 0
    # Binomial: std of the rate is sqrt(p(1-p)/n) ~ 0.008.
    assert abs(dropped_x.float().mean().item() - rate) < 0.04
    assert abs(dropped_y.float().mean().item() - 0.6) < 0.04
    # Independent per embedder: P(both) ~ 0.18.
    assert abs((dropped_x & dropped_y).float().mean().item() - 0.18) < 0.04
    torch.testing.assert_close(out[~dropped_x, :8], full[~dropped_x], atol=1e-5, rtol=0)


def test_ucg_generator_makes_dropout_reproducible():
    conditioner = GeneralConditioner([cte("x", 4, ucg_rate=0.5)])
    batch = {"x": torch.arange(64.0) + 1}
    masks = []
    for _ in range(2):
        conditioner.embedders[0].ucg_generator = torch.Generator().manual_seed(7)
        masks.append(conditioner(batch)["vector"].abs().sum(1) == 0)
    assert torch.equal(masks[0], masks[1]) and 0 < masks[0].sum() < 64


@torch.no_grad()
def test_legacy_ucg_value_replaces_prompts(clip_dir):
    config = {
        "target": MODULES + "FrozenCLIPEmbedder",
        "params": {"version": str(clip_dir)},
        "input_key": "txt",
        "ucg_rate": 0.5,
        "legacy_ucg_value": "",
    }
    conditioner = GeneralConditioner([config])
    prompts = ["a photo of a cat"] * 200
    batch = {"txt": prompts}
    out = conditioner(batch)["crossattn"]
    assert batch["txt"] is prompts and prompts == ["a photo of a cat"] * 200
    embedder = conditioner.embedders[0]
    empty, cat = embedder([""])[0], embedder(["a photo of a cat"])[0]
    is_empty = torch.tensor([torch.allclose(o, empty, atol=1e-6) for o in out])
    is_cat = torch.tensor([torch.allclose(o, cat, atol=1e-6) for o in out])
    assert torch.all(is_empty ^ is_cat)
    assert 0.38 < is_empty.float().mean().item() < 0.62


def test_force_zero_and_unconditional(sdxl_like):
    for embedder in sdxl_like.embedders:
        embedder.ucg_rate = 0.9
    try:
        batch_c = sdxl_batch()
        batch_uc = {**sdxl_batch(), "txt": ["", ""]}
        reference = None
        with sdxl_like.ucg_disabled():
            reference = sdxl_like(batch_c)
            reference_uc = sdxl_like(batch_uc)
        c, uc = sdxl_like.get_unconditional_conditioning(
            batch_c, batch_uc, force_uc_zero_embeddings=["txt"]
        )
        assert [e.ucg_rate for e in sdxl_like.embedders] == [0.9] * 5
        torch.testing.assert_close(c["crossattn"], reference["crossattn"])
        torch.testing.assert_close(c["vector"], reference["vector"])
        assert uc["crossattn"].abs().sum() == 0
        assert uc["vector"][:, :1280].abs().sum() == 0
        torch.testing.assert_close(uc["vector"][:, 1280:], reference_uc["vector"][:, 1280:])
        c2, uc2 = sdxl_like.get_unconditional_conditioning(
            batch_c, force_cond_zero_embeddings=["original_size_as_tuple"]
        )
        assert c2["vector"][:, 1280:1792].abs().sum() == 0
        torch.testing.assert_close(uc2["vector"], reference["vector"])
        with pytest.raises(InputError, match="txt"):
            sdxl_like.get_unconditional_conditioning({"original_size_as_tuple": None})
        assert [e.ucg_rate for e in sdxl_like.embedders] == [0.9] * 5
    finally:
        for embedder in sdxl_like.embedders:
            embedder.ucg_rate = 0.0


@torch.no_grad()
def test_zeroed_text_towers_run_once_for_c_and_uc(sdxl_like):
    # The oracle is the conditioner's own forward on the uc batch with the same embedders
    # zeroed (what get_unconditional_conditioning did before): identical tensors, while the
    # zeroed embedders (text towers, one size embedder) run for c only.
    calls = [0] * len(sdxl_like.embedders)
    hooks = [
        embedder.register_forward_hook(lambda *_, n=n: calls.__setitem__(n, calls[n] + 1))
        for n, embedder in enumerate(sdxl_like.embedders)
    ]
    try:
        batch_c = sdxl_batch()
        batch_uc = {**sdxl_batch(), "txt": ["", ""]}
        expected_c = sdxl_like(batch_c)
        zeroed = ["txt", "original_size_as_tuple"]
        expected_uc = sdxl_like(batch_uc, force_zero_embeddings=zeroed)
        calls[:] = [0] * len(calls)
        c, uc = sdxl_like.get_unconditional_conditioning(
            batch_c, batch_uc, force_uc_zero_embeddings=zeroed
        )
        assert calls == [1, 1, 1, 2, 2]
        assert c.keys() == expected_c.keys() and uc.keys() == expected_uc.keys()
        for key in c:
            assert torch.equal(c[key], expected_c[key])
            assert torch.equal(uc[key], expected_uc[key])
        # a different number of prompts for uc: the towers run again, shapes follow uc
        calls[:] = [0] * len(calls)
        _, uc1 = sdxl_like.get_unconditional_conditioning(
            sdxl_batch(2), {**sdxl_batch(1), "txt": [""]}, force_uc_zero_embeddings=["txt"]
        )
        assert calls[:2] == [2, 2] and uc1["crossattn"].shape[0] == 1
    finally:
        for hook in hooks:
            hook.remove()


def test_config_errors():
    with pytest.raises(ConfigError, match="input_key"):
        GeneralConditioner([{"target": MODULES + "IdentityEncoder"}])
    with pytest.raises(ConfigError, match="AbstractEmbModel"):
        GeneralConditioner([{"target": "torch.nn.Identity", "input_key": "x"}])
    assert GeneralConditioner([])({"x": 1}) == {}


def test_omegaconf_config():
    from omegaconf import OmegaConf

    config = OmegaConf.create(
        {"emb_models": [cte("x", 4, ucg_rate=0.0), {**cte("y", 4), "input_keys": None}]}
    )
    conditioner = GeneralConditioner(config.emb_models)
    out = conditioner({"x": torch.tensor([1.0]), "y": torch.tensor([[2.0, 3.0]])})
    torch.testing.assert_close(
        out["vector"], torch.cat([sinusoid([1.0], 4), sinusoid([[2.0, 3.0]], 4)], 1)
    )
