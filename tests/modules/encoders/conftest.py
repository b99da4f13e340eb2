"""Fixtures for the encoder tests: a network guard and tiny open_clip architectures."""

from __future__ import annotations

import json
import socket

import pytest

TINY_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 3}
TINY_VISION = {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32}
TINY_ARCHS = {
    "sgm-test-tiny": {"embed_dim": 32, "vision_cfg": TINY_VISION, "text_cfg": TINY_TEXT},
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
