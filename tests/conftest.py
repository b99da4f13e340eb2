"""Shared test setup: sgm first (installs the torchvision import hook), fixed seed, and the
tiny models most tests share (built by tests/builders.py)."""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import sgm  # noqa: E402,F401  (must precede Lightning / open_clip / diffusers)

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A tiny CLIP text model (two layers) with its tokenizer, in the Hugging Face layout."""
    from builders import write_tiny_clip

    return write_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="session")
def tiny_image_clip_dir(tmp_path_factory):
    """The tiny CLIP text model of the tiny image configs: no tokenizer files (the embedder
    then uses CLIP-L's tokenizer, as for the released SDXL configs), a 32-wide projection."""
    from builders import write_tiny_clip

    return write_tiny_clip(
        tmp_path_factory.mktemp("tiny_image_clip"), tokenizer=False, projection_dim=32
    )


@pytest.fixture(scope="session")
def video_arch_dir(tmp_path_factory):
    """The folder registering the open_clip architecture the tiny video configs name."""
    from builders import register_video_arch

    return register_video_arch(tmp_path_factory.mktemp("video_open_clip"))


@pytest.fixture(autouse=True)
def _main_module_restored():
    """Streamlit's test runner installs its own ``__main__`` module and leaves it there;
    a later test that spawns processes would then re-run a demo page in every child."""
    main = sys.modules.get("__main__")
    yield
    if main is not None:
        sys.modules["__main__"] = main


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
