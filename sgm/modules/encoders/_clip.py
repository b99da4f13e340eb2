"""``FrozenCLIPEmbedder``: the CLIP ViT-L/14 text encoder (transformers), built offline."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import ConfigError
from ...util import autocast
from ._base import AbstractEmbModel, buffer_device, building_on, module_device, resolve_init_device
from ._tokenizers import HFTokenizer, has_tokenizer_files, hf_clip_l_tokenizer

logger = logging.getLogger(__name__)

# Text tower of openai/clip-vit-large-patch14 (its config.json, text_config section).
CLIP_L_TEXT_CONFIG = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "projection_dim": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}
KNOWN_TEXT_CONFIGS = {
    "openai/clip-vit-large-patch14": CLIP_L_TEXT_CONFIG,
    "openai/clip-vit-large-patch14-336": CLIP_L_TEXT_CONFIG,
}
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
POSITION_IDS = "transformer.text_model.embeddings.position_ids"


def _text_config(version: str) -> Any:
    from transformers import CLIPTextConfig

    path = Path(version)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"CLIP text encoder folder {path} has no config.json")
        return CLIPTextConfig.from_pretrained(str(path), local_files_only=True)
    if version in KNOWN_TEXT_CONFIGS:
        return CLIPTextConfig(**KNOWN_TEXT_CONFIGS[version])
    raise ConfigError(
        f"FrozenCLIPEmbedder version {version!r} is neither a known architecture "
        f"({', '.join(KNOWN_TEXT_CONFIGS)}) nor a local folder with config.json "
        "(weights and tokenizer files optional); nothing is downloaded"
    )


def build_clip_text_model(version: str, init_device: torch.device) -> Any:
    """transformers ``CLIPTextModel`` for ``version``: weights from a local folder if it
    has them (each weights file in it checked whole first: ``CheckpointError`` names a
    truncated one or a pickle that would run code), else random (to be filled by the
    model checkpoint)."""
    from transformers import CLIPTextModel

    config = _text_config(version)
    path = Path(version)
    has_weights = path.is_dir() and any((path / f).is_file() for f in WEIGHT_FILES)
    if has_weights and init_device.type != "meta":
        from ...checkpoint import check_weights_folder

        check_weights_folder(path)  # a truncated or code-running file is named itself
        model = CLIPTextModel.from_pretrained(str(path), config=config, local_files_only=True).to(
            init_device
        )
    else:
        with building_on(init_device):
            model = CLIPTextModel(config)
    if not hasattr(model, "text_model"):
        model = TextModelWrapper(model)
    # Released checkpoints (saved with older transformers) store position_ids; keep the
    # buffer in the state dict so their keys match exactly.
    embeddings = model.text_model.embeddings
    position_ids = torch.arange(
        config.max_position_embeddings, device=buffer_device(init_device)
    ).expand((1, -1))
    embeddings.register_buffer("position_ids", position_ids, persistent=True)
    return model


class TextModelWrapper(nn.Module):
    """Holds a flat ``CLIPTextModel`` under ``text_model`` so that its parameters are
    named ``text_model.*``, as in released checkpoints."""

    def __init__(self, text_model: nn.Module) -> None:
        super().__init__()
        self.text_model = text_model

    @property
    def config(self) -> Any:
        return self.text_model.config

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.text_model(*args, **kwargs)


class FrozenCLIPEmbedder(AbstractEmbModel):
    """CLIP text encoder (transformers ``CLIPTextModel``) of SDXL and ``txt2img-clipl``.

    Args:
        version: an architecture name (``openai/clip-vit-large-patch14``, random weights
            that the model checkpoint fills) or a local folder in the Hugging Face
            layout (config.json, optional weights and tokenizer files).
        device: accepted for config compatibility; inputs follow the weights' device.
        max_length: token context length.
        layer: ``"last"`` hidden state, ``"pooled"`` output as one token, or
            ``"hidden"`` state number ``layer_idx`` (0 = embeddings).
        always_return_pooled: also return the pooled output ``(B, D)``.
    """

    LAYERS = ["last", "pooled", "hidden"]

    def __init__(
        self,
        version: str = "openai/clip-vit-large-patch14",
        device: str | None = None,
        max_length: int = 77,
        freeze: bool = True,
        layer: str = "last",
        layer_idx: int | None = None,
        always_return_pooled: bool = False,
    ) -> None:
        super().__init__()
        if layer not in self.LAYERS:
            raise ConfigError(f"FrozenCLIPEmbedder layer {layer!r} not in {self.LAYERS}")
        version = str(version)
        self.transformer = build_clip_text_model(version, resolve_init_device())
        n_layers = self.transformer.config.num_hidden_layers
        if layer == "hidden" and (layer_idx is None or abs(layer_idx) > n_layers):
            raise ConfigError(
                f"FrozenCLIPEmbedder layer 'hidden' needs layer_idx with "
                f"|layer_idx| <= {n_layers}, got {layer_idx!r}"
            )
        self.tokenizer = self._tokenizer(version, max_length)
        self.max_length = max_length
        self.layer = layer
        self.layer_idx = layer_idx
        self.return_pooled = always_return_pooled
        self.register_load_state_dict_pre_hook(_canonical_position_ids)
        if freeze:
            self.freeze()

    def _tokenizer(self, version: str, max_length: int):
        if has_tokenizer_files(version):
            return HFTokenizer(version, max_length)
        if self.transformer.config.vocab_size < 49408:
            raise ConfigError(
                f"{version}: vocab_size {self.transformer.config.vocab_size} is smaller "
                "than the CLIP vocabulary (49408) and the folder has no tokenizer files"
            )
        return hf_clip_l_tokenizer(max_length)

    @autocast
    def forward(
        self, text: str | Sequence[str]
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        tokens = self.tokenizer(text).to(module_device(self.transformer))
        outputs = self.transformer(input_ids=tokens, output_hidden_states=self.layer == "hidden")
        if self.layer == "last":
            z = outputs.last_hidden_state
        elif self.layer == "pooled":
            z = outputs.pooler_output[:, None, :]
        else:
            z = outputs.hidden_states[self.layer_idx]
        if self.return_pooled:
            return z, outputs.pooler_output
        return z

    def encode(self, text: str | Sequence[str]) -> Any:
        """Same as calling the module."""
        return self(text)


def _canonical_position_ids(module, state_dict, prefix, *args, **kwargs) -> None:
    # position_ids is the constant arange(77); some merged checkpoints lack it or store
    # it as floats, so the loaded value is always the exact constant.
    buffer = module.transformer.text_model.embeddings.position_ids
    state_dict[prefix + POSITION_IDS] = torch.arange(
        buffer.shape[-1], device=buffer.device if buffer.device.type != "meta" else "cpu"
    ).expand((1, -1))
