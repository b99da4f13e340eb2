"""Tiny models the tests build, in one place: a CLIP text model folder (Hugging Face
layout), tiny open_clip architectures, random-weight engines and their checkpoints, and
the released text encoders' architectures on the meta device (oracles for key layouts).

Every test imports from here (``tests/`` is on ``sys.path`` through ``tests/conftest.py``,
which also offers the common ones as fixtures).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parent
CONFIGS = TESTS / "configs"

# open_clip towers at toy widths; each architecture below names its depths.
_OPEN_CLIP_VISION = {"image_size": 224, "width": 64, "head_width": 32, "patch_size": 32}
_OPEN_CLIP_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4}


def refuse_network(patch) -> None:
    """Make opening a socket fail the test and keep the Hugging Face Hub offline, through
    ``patch`` (a ``pytest.MonkeyPatch``)."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    patch.setenv("HF_HUB_OFFLINE", "1")
    patch.setattr(socket.socket, "connect", refuse)
    patch.setattr(socket, "create_connection", refuse)
    patch.setattr(socket, "getaddrinfo", refuse)


def open_clip_arch(embed_dim: int = 32, text_layers: int = 3, vision_layers: int = 2) -> dict:
    """An open_clip model config (``add_model_config`` format) with toy towers."""
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {**_OPEN_CLIP_VISION, "layers": vision_layers},
        "text_cfg": {**_OPEN_CLIP_TEXT, "layers": text_layers},
    }


# The architecture the tiny video configs (tests/configs/*svd*, sv3d*, sv4d*) name.
VIDEO_ARCH = "sgm-test-video-tiny"
VIDEO_ARCH_CONFIG = open_clip_arch(text_layers=1, vision_layers=1)


def register_open_clip(folder: Path, archs: Mapping[str, Mapping]) -> Path:
    """Write each ``name -> config`` to ``folder/<name>.json`` and register the folder with
    open_clip (its config API), so configs can name the architectures; returns ``folder``."""
    from open_clip.factory import add_model_config

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, config in archs.items():
        (folder / f"{name}.json").write_text(json.dumps(config))
    add_model_config(folder)
    return folder


def register_video_arch(folder: Path) -> Path:
    """Register :data:`VIDEO_ARCH` from ``folder``; returns the folder."""
    return register_open_clip(folder, {VIDEO_ARCH: VIDEO_ARCH_CONFIG})


def tiny_clip_config(layers: int = 2, projection_dim: int | None = None):
    """transformers' ``CLIPTextConfig`` of a tiny CLIP text model (CLIP's vocabulary and
    token ids, 32 wide, ``layers`` deep)."""
    from transformers import CLIPTextConfig

    extra = {} if projection_dim is None else {"projection_dim": projection_dim}
    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=2,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
        **extra,
    )


def write_tiny_clip(
    folder: Path,
    *,
    layers: int = 2,
    tokenizer: bool = True,
    weights: bool = True,
    projection_dim: int | None = None,
) -> Path:
    """A tiny CLIP text model saved in the Hugging Face layout in ``folder`` (weights drawn
    from seed 2). ``tokenizer``: its tokenizer files too; without them the embedder uses
    CLIP-L's tokenizer, as for the released SDXL configs. Without ``weights``: the
    architecture (config.json) alone."""
    config = tiny_clip_config(layers, projection_dim)
    folder = Path(folder)
    if weights:
        from transformers import CLIPTextModel

        torch.manual_seed(2)
        CLIPTextModel(config).save_pretrained(folder)
    else:
        config.save_pretrained(folder)
    if tokenizer:
        from sgm.modules.encoders._tokenizers import build_hf_clip_tokenizer

        build_hf_clip_tokenizer().save_pretrained(folder)
    return folder


# The released text encoders as transformers configures them: (class, config).
_RELEASED_CLIP_TEXT = {
    "clip_l": (  # CLIP ViT-L/14 (SD 1.x, SDXL's first encoder)
        "CLIPTextModel",
        dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12),
        dict(num_attention_heads=12, hidden_act="quick_gelu", projection_dim=768),
    ),
    "bigg": (  # OpenCLIP ViT-bigG/14 (SDXL's second encoder)
        "CLIPTextModelWithProjection",
        dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32),
        dict(num_attention_heads=20, hidden_act="gelu", projection_dim=1280),
    ),
    "vit_h": (  # SD 2.x: OpenCLIP ViT-H/14's text tower without its last block
        "CLIPTextModel",
        dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23),
        dict(num_attention_heads=16, hidden_act="gelu", projection_dim=512),
    ),
}


def released_clip_text_model(kind: str) -> torch.nn.Module:
    """transformers' model of a released text encoder (``clip_l``, ``bigg`` or ``vit_h``),
    built on the meta device."""
    import transformers

    name, sizes, rest = _RELEASED_CLIP_TEXT[kind]
    config = transformers.CLIPTextConfig(
        vocab_size=49408, max_position_embeddings=77, **sizes, **rest
    )
    with torch.device("meta"):
        return getattr(transformers, name)(config)


def save_state(model: torch.nn.Module, path: Path) -> Path:
    """``model``'s state dict as a ``.safetensors`` file at ``path``; returns the path."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def wake_zero_weights(network: torch.nn.Module, std: float | None = None) -> None:
    """Redraw the parameters a network initialises to zero (the UNet's output layers), which
    would make it return 0 and hide it from a test: from N(0, ``std``), or with
    ``std=None`` Kaiming-uniform (PyTorch's default for layers) on every matrix."""
    with torch.no_grad():
        for param in network.parameters():
            if param.any():
                continue
            if std is not None:
                param.normal_(0.0, std)
            elif param.dim() > 1:
                torch.nn.init.kaiming_uniform_(param, a=5**0.5)


def tiny_image_config(kind: str, clip_dir: Path, name: str = "image_tiny"):
    """``tests/configs/<name>_<kind>.yaml`` with its CLIP text model read from ``clip_dir``."""
    from omegaconf import OmegaConf

    config = OmegaConf.load(CONFIGS / f"{name}_{kind}.yaml")
    config.model.params.conditioner_config.params.emb_models[0].params.version = str(clip_dir)
    return config


def build_engine(config, seed: int = 0) -> torch.nn.Module:
    """The engine of ``config`` (its ``model`` section), random weights drawn from ``seed``."""
    from sgm.util import instantiate_from_config

    torch.manual_seed(seed)
    return instantiate_from_config(config.model)


def write_tiny_model(
    kind: str, clip_dir: Path, folder: Path, ckpt_name: str, seed: int = 0
) -> tuple[Path, Path]:
    """(config path, checkpoint path) of ``image_tiny_<kind>.yaml`` with random weights
    drawn from ``seed`` (zero-initialised layers redrawn), the checkpoint saved as
    ``folder / ckpt_name``."""
    from omegaconf import OmegaConf

    config = tiny_image_config(kind, clip_dir)
    engine = build_engine(config, seed)
    wake_zero_weights(engine.model)
    ckpt = save_state(engine, Path(folder) / ckpt_name)
    config_path = Path(folder) / f"image_tiny_{kind}.yaml"
    OmegaConf.save(config, config_path)
    return config_path, ckpt
