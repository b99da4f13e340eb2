"""The tiny SDXL base engine of the conversion tests (same config, random weights), its
checkpoint, and the diffusers folder ``sgm.convert`` exports from it; kohya-layout adapter
files with random factors for it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

CONVERT = Path(__file__).resolve().parents[1] / "convert"
if str(CONVERT) not in sys.path:
    sys.path.insert(0, str(CONVERT))

from _tiny_models import randomize  # noqa: E402

TEXT = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 3}
VISION = {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32}


def _register_archs(folder: Path) -> None:
    from open_clip.factory import add_model_config

    for name, width in (("sgm-test-convert-bigg", 48), ("sgm-test-convert-text", 32)):
        config = {"embed_dim": width, "vision_cfg": VISION, "text_cfg": TEXT}
        (folder / f"{name}.json").write_text(json.dumps(config))
    add_model_config(folder)


def _clip_l(folder: Path) -> Path:
    from transformers import CLIPTextConfig

    CLIPTextConfig(
        vocab_size=49408,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        projection_dim=32,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    ).save_pretrained(folder)
    return folder


def sdxl_files(folder: Path, family: str = "sdxl_base") -> tuple[Path, Path]:
    """(config path, checkpoint path) of a tiny SDXL base (or SD 2.1: ``family="sd21"``)
    engine with random weights."""
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    from sgm.convert._engine import build_engine, load_config

    _register_archs(folder)
    config = OmegaConf.load(CONVERT / "configs" / f"tiny_{family}.yaml")
    if family == "sdxl_base":
        embedders = config.model.params.conditioner_config.params.emb_models
        embedders[0].params.version = str(_clip_l(folder / "clip_l"))
    config_path = folder / f"tiny_{family}.yaml"
    OmegaConf.save(config, config_path)
    engine = build_engine(load_config(config_path), device="cpu")
    randomize(engine, seed=1)
    ckpt = folder / "sdxl.safetensors"
    save_file({k: v.contiguous() for k, v in engine.state_dict().items()}, ckpt)
    return config_path, ckpt


def engine(config_path: Path, ckpt: Path) -> torch.nn.Module:
    from sgm.checkpoint import load_checkpoint_into
    from sgm.convert._engine import build_engine, load_config

    model = build_engine(load_config(config_path), device="cpu").eval()
    assert load_checkpoint_into(model, ckpt, strict=True).ok
    return model


def kohya_lora(
    targets: dict, rank: int = 4, alpha: float = 2.0, seed: int = 0, std: float = 0.3, skip=()
) -> dict[str, torch.Tensor]:
    """Random kohya LoRA tensors (``lora_down``/``lora_up``/``alpha``) for ``targets``
    (kohya layer name -> target, as ``kohya_targets`` gives)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, (layer, target) in enumerate(sorted(targets.items())):
        if any(s in layer for s in skip):
            continue
        shape = target.shape
        kernel = tuple(shape[2:])
        out[f"{layer}.lora_down.weight"] = torch.randn(rank, shape[1], *kernel, generator=g) * std
        out[f"{layer}.lora_up.weight"] = (
            torch.randn(shape[0], rank, *[1] * len(kernel), generator=g) * std
        )
        out[f"{layer}.alpha"] = torch.tensor(float(alpha))
    return out
