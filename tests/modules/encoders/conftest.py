"""Fixtures for the encoder tests: a network guard and tiny open_clip architectures."""

from __future__ import annotations

import json
import socket

import pytest

TINY_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 3}
TINY_VISION = {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32}
TINY_ARCHS = {
    "sgm-test-tiny": {"embed_dim": 32, "vision_cfg": TINY_VISION, "text_cfg": TINY_TEXT},
    # ViT-bigG-14's pooled width (1280) on a tiny text tower.
    "sgm-test-tiny-g": {"embed_dim": 1280, "vision_cfg": TINY_VISION, "text_cfg": TINY_TEXT},
}


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a socket fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture(scope="session")
def tiny_arch(tmp_path_factory):
    """Name of a tiny open_clip architecture registered through open_clip's config API."""
    from open_clip.factory import add_model_config

    folder = tmp_path_factory.mktemp("open_clip_configs")
    for name, config in TINY_ARCHS.items():
        (folder / f"{name}.json").write_text(json.dumps(config))
    add_model_config(folder)
    return "sgm-test-tiny"


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory):
    """A tiny CLIP text model saved in the Hugging Face layout, with its tokenizer."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    from sgm.modules.encoders._tokenizers import build_hf_clip_tokenizer

    folder = tmp_path_factory.mktemp("tiny_clip")
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )
    torch.manual_seed(2)
    CLIPTextModel(config).save_pretrained(folder)
    build_hf_clip_tokenizer().save_pretrained(folder)
    return folder
