"""Text encoders against open_clip and transformers called directly on the same weights."""

from __future__ import annotations

import pytest
import torch

from sgm.modules.encoders.modules import (
    FrozenCLIPEmbedder,
    FrozenOpenCLIPEmbedder,
    FrozenOpenCLIPEmbedder2,
)

PROMPTS = ["a photo of a cat", "", "Ünïcödé café 東京 🐱", " ".join(["long"] * 90)]
ATOL = 1e-5


@pytest.fixture(scope="module")
def reference_clip(tiny_arch):
    """An open_clip model with random weights, built by open_clip itself."""
    import open_clip

    torch.manual_seed(1)
    model = open_clip.create_model(tiny_arch, pretrained=None).eval()
    # Non-trivial projection and norms so every path matters.
    with torch.no_grad():
        model.ln_final.weight.normal_(1.0, 0.2)
        model.ln_final.bias.normal_(0.0, 0.2)
    return model


def text_weights(model):
    return {k: v for k, v in model.state_dict().items() if not k.startswith("visual.")}


def intermediates(model, tokens, normalize):
    out = model.forward_intermediates(
        text=tokens, normalize_intermediates=normalize, intermediates_only=True
    )
    return out["text_intermediates"]


@torch.no_grad()
def test_openclip2_non_legacy_matches_open_clip(no_network, tiny_arch, reference_clip):
    import open_clip

    embedder = FrozenOpenCLIPEmbedder2(
        arch=tiny_arch, layer="penultimate", always_return_pooled=True, legacy=False
    )
    embedder.model.load_state_dict(text_weights(reference_clip))
    tokens = open_clip.tokenize(PROMPTS)
    z, pooled = embedder(PROMPTS)
    # SDXL: the raw (un-normalised) input of the last block, pooled = projected EOT.
    expected = intermediates(reference_clip, tokens, normalize=False)[-2]
    torch.testing.assert_close(z, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(pooled, reference_clip.encode_text(tokens), atol=ATOL, rtol=0)
    assert z.shape == (4, 77, 64) and pooled.shape == (4, 32)

    embedder.layer = "last"
    z_last, _ = embedder(PROMPTS)
    expected = intermediates(reference_clip, tokens, normalize=False)[-1]
    torch.testing.assert_close(z_last, expected, atol=ATOL, rtol=0)


@torch.no_grad()
@pytest.mark.parametrize("layer,index", [("penultimate", -2), ("last", -1)])
def test_openclip_legacy_matches_open_clip(no_network, tiny_arch, reference_clip, layer, index):
    import open_clip

    tokens = open_clip.tokenize(PROMPTS)
    expected = intermediates(reference_clip, tokens, normalize=True)[index]
    for cls in (FrozenOpenCLIPEmbedder, FrozenOpenCLIPEmbedder2):
        embedder = cls(arch=tiny_arch, layer=layer)
        embedder.model.load_state_dict(text_weights(reference_clip))
        torch.testing.assert_close(embedder(PROMPTS), expected, atol=ATOL, rtol=0)


def test_openclip_weights_file_is_loaded(no_network, tiny_arch, reference_clip, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "open_clip_weights.safetensors"
    save_file({k: v.contiguous() for k, v in reference_clip.state_dict().items()}, path)
    embedder = FrozenOpenCLIPEmbedder(arch=tiny_arch, version=str(path))
    for key, value in text_weights(reference_clip).items():
        assert torch.equal(embedder.model.state_dict()[key], value), key


def test_openclip_bad_arguments(tiny_arch):
    from sgm.errors import ConfigError

    with pytest.raises(ConfigError, match="no-such-arch"):
        FrozenOpenCLIPEmbedder(arch="no-such-arch")
    with pytest.raises(ConfigError, match="pooled"):
        FrozenOpenCLIPEmbedder2(arch=tiny_arch, always_return_pooled=True, legacy=True)
    with pytest.raises(ConfigError, match="layer"):
        FrozenOpenCLIPEmbedder(arch=tiny_arch, layer="first")


@torch.no_grad()
@pytest.mark.parametrize(
    "layer,layer_idx", [("last", None), ("hidden", 2), ("hidden", -2), ("pooled", None)]
)
def test_clip_embedder_matches_transformers(no_network, clip_dir, layer, layer_idx):
    from transformers import CLIPTextModel, CLIPTokenizer

    embedder = FrozenCLIPEmbedder(
        version=str(clip_dir), layer=layer, layer_idx=layer_idx, always_return_pooled=True
    )
    reference = CLIPTextModel.from_pretrained(clip_dir, local_files_only=True).eval()
    tokenizer = CLIPTokenizer.from_pretrained(clip_dir, local_files_only=True)
    tokens = tokenizer(
        PROMPTS, truncation=True, max_length=77, padding="max_length", return_tensors="pt"
    )["input_ids"]
    assert tokens[1, 2:].eq(49407).all()  # end-of-text padding
    out = reference(input_ids=tokens, output_hidden_states=True)
    z, pooled = embedder(PROMPTS)
    expected = {
        "last": out.last_hidden_state,
        "hidden": out.hidden_states[layer_idx] if layer_idx is not None else None,
        "pooled": out.pooler_output[:, None, :],
    }[layer]
    torch.testing.assert_close(z, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(pooled, out.pooler_output, atol=ATOL, rtol=0)
    # Pooled output is the final-normalised state at the first end-of-text token.
    eot = (tokens == 49407).int().argmax(dim=-1)
    torch.testing.assert_close(pooled, out.last_hidden_state[torch.arange(4), eot])


def test_clip_embedder_keys_and_position_ids(clip_dir):
    embedder = FrozenCLIPEmbedder(version=str(clip_dir), layer="hidden", layer_idx=1)
    state = embedder.state_dict()
    assert all(k.startswith("transformer.text_model.") for k in state)
    assert torch.equal(
        state["transformer.text_model.embeddings.position_ids"], torch.arange(77)[None]
    )
    # Checkpoints without position_ids, or with them stored as floats, still load.
    partial = {k: v for k, v in state.items() if not k.endswith("position_ids")}
    embedder.load_state_dict(partial)
    partial["transformer.text_model.embeddings.position_ids"] = torch.arange(77.0)[None]
    embedder.load_state_dict(partial)
    ids = embedder.transformer.text_model.embeddings.position_ids
    assert ids.dtype == torch.long and torch.equal(ids, torch.arange(77)[None])


def test_clip_embedder_bad_arguments(tmp_path):
    from sgm.errors import ConfigError

    with pytest.raises(ConfigError, match="layer_idx"):
        FrozenCLIPEmbedder(layer="hidden")
    with pytest.raises(ConfigError, match="nothing is downloaded"):
        FrozenCLIPEmbedder(version="someone/unknown-clip")
    with pytest.raises(ConfigError, match="config.json"):
        FrozenCLIPEmbedder(version=str(tmp_path))


@torch.no_grad()
def test_built_on_meta_then_loaded_equals_real(tiny_arch, reference_clip, clip_dir):
    real = FrozenOpenCLIPEmbedder2(
        arch=tiny_arch, layer="penultimate", legacy=False, always_return_pooled=True
    )
    real.model.load_state_dict(text_weights(reference_clip))
    with torch.device("meta"):
        lazy = FrozenOpenCLIPEmbedder2(
            arch=tiny_arch, layer="penultimate", legacy=False, always_return_pooled=True
        )
    assert lazy.model.token_embedding.weight.is_meta
    lazy.load_state_dict(real.state_dict(), assign=True)
    for a, b in zip(lazy(PROMPTS), real(PROMPTS)):
        torch.testing.assert_close(a, b)

    clip_real = FrozenCLIPEmbedder(version=str(clip_dir))
    with torch.device("meta"):
        clip_lazy = FrozenCLIPEmbedder(version=str(clip_dir))
    clip_lazy.load_state_dict(clip_real.state_dict(), assign=True)
    torch.testing.assert_close(clip_lazy(PROMPTS), clip_real(PROMPTS))
