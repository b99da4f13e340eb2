"""T5 / ByT5 text encoders (transformers) loaded from local folders, and CLIP + T5."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ... import precision
from ...errors import ConfigError
from ._base import AbstractEmbModel, building_on, module_device, resolve_init_device
from ._clip import WEIGHT_FILES, FrozenCLIPEmbedder
from ._tokenizers import HFTokenizer, has_tokenizer_files


def _local_folder(version: str, what: str) -> Path:
    path = Path(str(version))
    missing = [
        name
        for name, ok in (
            ("the folder", path.is_dir()),
            ("config.json", (path / "config.json").is_file()),
            ("tokenizer files", has_tokenizer_files(path)),
        )
        if not ok
    ]
    if missing:
        raise ConfigError(
            f"{what} version {version!r} must be a local folder in the Hugging Face "
            f"layout (config.json, tokenizer files, optional weights); missing: "
            f"{', '.join(missing)}. Nothing is downloaded: save the model there first "
            "(e.g. with save_pretrained)."
        )
    return path


def build_t5_encoder(path: Path, init_device: torch.device):
    """transformers ``T5EncoderModel`` from a local folder (random if it has no weights);
    each weights file in it is checked whole first (``CheckpointError`` names it)."""
    from transformers import T5Config, T5EncoderModel

    has_weights = any((path / f).is_file() for f in WEIGHT_FILES)
    if has_weights and init_device.type != "meta":
        from ...checkpoint import check_weights_folder

        check_weights_folder(path)  # a truncated or code-running file is named itself
        return T5EncoderModel.from_pretrained(str(path), local_files_only=True).to(init_device)
    config = T5Config.from_pretrained(str(path), local_files_only=True)
    with building_on(init_device):
        return T5EncoderModel(config)


class FrozenT5Embedder(AbstractEmbModel):
    """T5 encoder last hidden state ``(B, max_length, D)``; ``version`` is a local folder.

    Weights: ``transformer.*``.
    """

    def __init__(
        self,
        version: str = "google/t5-v1_1-xxl",
        device: str | None = None,
        max_length: int = 77,
        freeze: bool = True,
    ) -> None:
        super().__init__()
        path = _local_folder(version, type(self).__name__)
        self.tokenizer = HFTokenizer(path, max_length)
        self.transformer = build_t5_encoder(path, resolve_init_device())
        self.max_length = max_length
        if freeze:
            self.freeze()

    def forward(self, text: str | Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(text).to(module_device(self.transformer))
        with precision.float32(tokens):
            outputs = self.transformer(input_ids=tokens)
        return outputs.last_hidden_state

    def encode(self, text: str | Sequence[str]) -> torch.Tensor:
        """Same as calling the module."""
        return self(text)


class FrozenByT5Embedder(FrozenT5Embedder):
    """ByT5 (byte-level T5) encoder last hidden state; ``version`` is a local folder."""

    def __init__(
        self,
        version: str = "google/byt5-base",
        device: str | None = None,
        max_length: int = 77,
        freeze: bool = True,
    ) -> None:
        super().__init__(version, device, max_length, freeze)


class FrozenCLIPT5Encoder(AbstractEmbModel):
    """``[CLIP hidden states, T5 hidden states]`` of the same prompts."""

    def __init__(
        self,
        clip_version: str = "openai/clip-vit-large-patch14",
        t5_version: str = "google/t5-v1_1-xl",
        device: str | None = None,
        clip_max_length: int = 77,
        t5_max_length: int = 77,
    ) -> None:
        super().__init__()
        self.clip_encoder = FrozenCLIPEmbedder(clip_version, device, max_length=clip_max_length)
        self.t5_encoder = FrozenT5Embedder(t5_version, device, max_length=t5_max_length)

    def encode(self, text: str | Sequence[str]) -> list[torch.Tensor]:
        """Same as calling the module."""
        return self(text)

    def forward(self, text: str | Sequence[str]) -> list[torch.Tensor]:
        return [self.clip_encoder.encode(text), self.t5_encoder.encode(text)]
