"""Tiny image models for CLI and sampler tests: a tiny CLIP text model folder and
random-weight engines from tests/configs/image_tiny_*.yaml, saved as safetensors."""

from __future__ import annotations

from pathlib import Path

import torch

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def make_clip_folder(folder: Path) -> Path:
    """A tiny CLIP text model in the Hugging Face layout, without tokenizer files: the
    embedder then uses CLIP-L's tokenizer, as for the released SDXL configs."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
        projection_dim=32,
    )
    torch.manual_seed(2)
    CLIPTextModel(config).save_pretrained(folder)
    return folder


def write_tiny_model(
    kind: str, clip_dir: Path, folder: Path, ckpt_name: str, seed: int = 0
) -> tuple[Path, Path]:
    """(config path, checkpoint path) of ``image_tiny_<kind>.yaml`` with random weights
    drawn from ``seed``, the checkpoint saved as ``folder / ckpt_name``."""
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    from sgm.util import instantiate_from_config

    config = OmegaConf.load(CONFIGS / f"image_tiny_{kind}.yaml")
    config.model.params.conditioner_config.params.emb_models[0].params.version = str(clip_dir)
    torch.manual_seed(seed)
    engine = instantiate_from_config(config.model)
    with torch.no_grad():  # the UNet's zero-initialised output layers would make it return 0
        for param in engine.model.parameters():
            if param.dim() > 1 and not param.any():
                torch.nn.init.kaiming_uniform_(param, a=5**0.5)
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = folder / ckpt_name
    save_file({k: v.contiguous() for k, v in engine.state_dict().items()}, str(ckpt))
    config_path = folder / f"image_tiny_{kind}.yaml"
    OmegaConf.save(config, config_path)
    return config_path, ckpt
