"""Fixtures for the encoder tests: a network guard and tiny open_clip architectures."""

from __future__ import annotations

import pytest
from builders import open_clip_arch, refuse_network, register_open_clip, write_tiny_clip

TINY_ARCHS = {
    "sgm-test-tiny": open_clip_arch(embed_dim=32, text_layers=3, vision_layers=2),
    # ViT-bigG-14's pooled width (1280) on a tiny text tower.
    "sgm-test-tiny-g": open_clip_arch(embed_dim=1280, text_layers=3, vision_layers=2),
}


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a socket fails the test."""
    refuse_network(monkeypatch)


@pytest.fixture(scope="session")
def tiny_arch(tmp_path_factory):
    """Name of a tiny open_clip architecture registered through open_clip's config API."""
    register_open_clip(tmp_path_factory.mktemp("open_clip_configs"), TINY_ARCHS)
    return "sgm-test-tiny"


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory):
    """A tiny CLIP text model saved in the Hugging Face layout, with its tokenizer."""
    return write_tiny_clip(tmp_path_factory.mktemp("tiny_clip"), layers=3)
