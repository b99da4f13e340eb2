"""open_clip text and image encoders (SD 2.1, SDXL, SVD/SV3D/SV4D), built offline."""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from einops import rearrange, repeat
from torch import nn

from ...errors import ConfigError
from ...util import autocast, expand_dims_like
from ._base import AbstractEmbModel, buffer_device, building_on, module_device, resolve_init_device
from ._tokenizers import open_clip_tokenizer

logger = logging.getLogger(__name__)

# A one-block vision tower stands in for the one that is deleted right after
# construction, so text encoders never allocate (and randomly fill) billions of weights.
_STUB_VISION_CFG = {"image_size": 32, "layers": 1, "width": 64, "patch_size": 32}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _model_config(arch: str) -> dict[str, Any]:
    """open_clip's config of a registered architecture name, or of a model config file
    (``*.json``, open_clip's format) when ``arch`` is the path of one."""
    from open_clip.factory import get_model_config, list_models

    if str(arch).endswith(".json") and Path(str(arch)).is_file():
        config = _arch_file(Path(str(arch)))
    else:
        config = get_model_config(str(arch))
    if config is None:
        raise ConfigError(
            f"unknown open_clip architecture {arch!r}; known: {', '.join(list_models())}"
        )
    if config.pop("custom_text", False) or "hf_model_name" in config["text_cfg"]:
        raise ConfigError(f"open_clip architecture {arch!r} has a custom text tower")
    return copy.deepcopy(config)


def _arch_file(path: Path) -> dict[str, Any]:
    import json

    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ConfigError(f"open_clip architecture file {path}: {error}") from None
    if not isinstance(config, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= set(config):
        raise ConfigError(
            f"open_clip architecture file {path}: expected embed_dim, vision_cfg and text_cfg"
        )
    return config


def causal_mask(n: int, device: torch.device) -> torch.Tensor:
    """Additive causal attention mask (n, n): -inf above the diagonal."""
    return torch.full((n, n), float("-inf"), device=device).triu_(1)


def build_open_clip(
    arch: str, version: str | None, keep: str, init_device: torch.device
) -> nn.Module:
    """open_clip ``CLIP`` for ``arch`` keeping only the ``"text"`` or ``"image"`` tower.

    ``version`` is a pretrained tag (ignored: weights come from the model checkpoint)
    or a local weights file, which is loaded.
    """
    from open_clip.model import CLIP

    config = _model_config(arch)
    if keep == "text":
        config["vision_cfg"] = dict(_STUB_VISION_CFG)
    else:
        # The text transformer is deleted; its token embedding and projection stay.
        config["text_cfg"] = {**config["text_cfg"], "layers": 1}
    with building_on(init_device):
        model = CLIP(**config)
    if keep == "text":
        del model.visual
    else:
        del model.transformer
    model.attn_mask = causal_mask(model.context_length, buffer_device(init_device))
    _load_weights_file(model, version, keep, init_device)
    return model


def _load_weights_file(
    model: nn.Module, version: str | None, keep: str, init_device: torch.device
) -> None:
    if version is None or not Path(str(version)).is_file():
        logger.debug("open_clip %s tower: random weights (version %r)", keep, version)
        return
    if init_device.type == "meta":
        logger.info("built on meta: weights file %s not loaded", version)
        return
    from ...checkpoint import load_state_dict, load_state_dict_into

    state_dict = load_state_dict(version)
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    dropped = ("visual.",) if keep == "text" else ("transformer.",)
    load_state_dict_into(model, state_dict, ignore_unexpected=dropped, source=str(version))


def text_transformer_forward(
    model: nn.Module, x: torch.Tensor, stop_before: int = 0
) -> dict[str, torch.Tensor]:
    """Run the text blocks on NLD ``x``; ``"penultimate"`` is the input of the last block,
    ``"last"`` the output of the last block run (``stop_before`` blocks are skipped)."""
    transformer = model.transformer
    blocks = transformer.resblocks
    batch_first = getattr(transformer, "batch_first", False)
    h = x if batch_first else x.transpose(0, 1)
    outputs = {}
    for i, block in enumerate(blocks[: len(blocks) - stop_before]):
        if i == len(blocks) - 1:
            outputs["penultimate"] = h if batch_first else h.transpose(0, 1)
        h = block(h, attn_mask=model.attn_mask)
    outputs["last"] = h if batch_first else h.transpose(0, 1)
    return outputs


def embed_tokens(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Token plus positional embedding, (B, L) -> (B, L, D)."""
    return model.token_embedding(tokens) + model.positional_embedding


class FrozenOpenCLIPEmbedder(AbstractEmbModel):
    """open_clip text encoder of SD 2.x: hidden states of the ``"last"`` block or the
    ``"penultimate"`` one, followed by the final layer norm. Weights: ``model.*``."""

    LAYERS = ["last", "penultimate"]

    def __init__(
        self,
        arch: str = "ViT-H-14",
        version: str = "laion2b_s32b_b79k",
        device: str | None = None,
        max_length: int = 77,
        freeze: bool = True,
        layer: str = "last",
    ) -> None:
        super().__init__()
        if layer not in self.LAYERS:
            raise ConfigError(f"FrozenOpenCLIPEmbedder layer {layer!r} not in {self.LAYERS}")
        self.model = build_open_clip(arch, version, "text", resolve_init_device())
        self.max_length = max_length
        self.tokenizer = open_clip_tokenizer(self.model.context_length)
        self.layer = layer
        self.layer_idx = self.LAYERS.index(layer)
        if freeze:
            self.freeze()

    def forward(self, text: str | Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(text).to(module_device(self.model))
        return self.encode_with_transformer(tokens)

    def encode_with_transformer(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids -> (B, L, D) normalised hidden states of the chosen layer."""
        x = embed_tokens(self.model, tokens)
        x = text_transformer_forward(self.model, x, stop_before=self.layer_idx)["last"]
        return self.model.ln_final(x)

    def encode(self, text: str | Sequence[str]) -> torch.Tensor:
        """Same as calling the module."""
        return self(text)


class FrozenOpenCLIPEmbedder2(AbstractEmbModel):
    """open_clip text encoder of SDXL (ViT-bigG-14): hidden states and pooled output.

    With ``legacy=True`` the chosen layer goes through the final layer norm (as SD 2.x).
    With ``legacy=False`` the chosen layer is returned as is, and the pooled output is
    ``ln_final(last)`` at the end-of-text token times ``text_projection``.
    """

    LAYERS = ["pooled", "last", "penultimate"]

    def __init__(
        self,
        arch: str = "ViT-H-14",
        version: str = "laion2b_s32b_b79k",
        device: str | None = None,
        max_length: int = 77,
        freeze: bool = True,
        layer: str = "last",
        always_return_pooled: bool = False,
        legacy: bool = True,
    ) -> None:
        super().__init__()
        if layer not in ("last", "penultimate"):
            raise ConfigError(
                f"FrozenOpenCLIPEmbedder2 layer must be 'last' or 'penultimate', got {layer!r}"
            )
        if always_return_pooled and legacy:
            raise ConfigError("FrozenOpenCLIPEmbedder2: always_return_pooled needs legacy=False")
        self.model = build_open_clip(arch, version, "text", resolve_init_device())
        self.max_length = max_length
        self.tokenizer = open_clip_tokenizer(self.model.context_length)
        self.return_pooled = always_return_pooled
        self.layer = layer
        self.layer_idx = 0 if layer == "last" else 1
        self.legacy = legacy
        if freeze:
            self.freeze()

    @autocast
    def forward(
        self, text: str | Sequence[str]
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        tokens = self.tokenizer(text).to(module_device(self.model))
        z = self.encode_with_transformer(tokens)
        if self.legacy:
            return z
        if self.return_pooled:
            return z[self.layer], z["pooled"]
        return z[self.layer]

    def encode_with_transformer(
        self, tokens: torch.Tensor
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Legacy: the normalised chosen layer. Else a dict of ``"last"``,
        ``"penultimate"`` (raw hidden states) and ``"pooled"``."""
        x = text_transformer_forward(self.model, embed_tokens(self.model, tokens))
        if self.legacy:
            return self.model.ln_final(x[self.layer])
        x["pooled"] = self.pool(self.model.ln_final(x["last"]), tokens)
        return x

    def pool(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Features at the end-of-text token (the highest id) times ``text_projection``."""
        eot = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        return eot @ self.model.text_projection

    def encode(self, text: str | Sequence[str]) -> Any:
        """Same as calling the module."""
        return self(text)


class FrozenOpenCLIPImageEmbedder(AbstractEmbModel):
    """open_clip image encoder (SVD/SV3D/SV4D): images in [-1, 1] -> CLIP image embedding.

    Images are resized to 224x224 (bicubic, ``align_corners=True``, antialiased), mapped
    to [0, 1] and normalised with the CLIP mean/std. Weights: ``model.*`` (the text
    transformer is deleted). ``num_image_crops > 0`` embeds ``(B, N, C, H, W)`` crops
    and pads the sequence to ``max_length``.
    """

    def __init__(
        self,
        arch: str = "ViT-H-14",
        version: str = "laion2b_s32b_b79k",
        device: str | None = None,
        max_length: int = 77,
        freeze: bool = True,
        antialias: bool = True,
        ucg_rate: float = 0.0,
        unsqueeze_dim: bool = False,
        repeat_to_max_len: bool = False,
        num_image_crops: int = 0,
        output_tokens: bool = False,
        init_device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        init_device = resolve_init_device(init_device)
        self.model = build_open_clip(arch, version, "image", init_device)
        self.max_crops = num_image_crops
        self.pad_to_max_len = self.max_crops > 0
        self.repeat_to_max_len = repeat_to_max_len and not self.pad_to_max_len
        self.max_length = max_length
        if freeze:
            self.freeze()
        self.antialias = antialias
        where = buffer_device(init_device)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN, device=where), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD, device=where), persistent=False)
        self.ucg_rate = ucg_rate
        self.unsqueeze_dim = unsqueeze_dim
        self.stored_batch = None
        self.model.visual.output_tokens = output_tokens
        self.output_tokens = output_tokens

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images (B, 3, H, W) -> normalised 224x224 CLIP input."""
        import kornia

        x = kornia.geometry.resize(
            x,
            (224, 224),
            interpolation="bicubic",
            align_corners=True,
            antialias=self.antialias,
        )
        x = (x + 1.0) / 2.0
        return kornia.enhance.normalize(x, self.mean.to(x), self.std.to(x))

    @autocast
    def forward(self, image: torch.Tensor, no_dropout: bool = False) -> Any:
        z = self.encode_with_vision_transformer(image)
        tokens = None
        if self.output_tokens:
            z, tokens = z
        z = z.to(image.dtype)
        if self.ucg_rate > 0.0 and not no_dropout and not self.max_crops > 0:
            keep = torch.bernoulli((1.0 - self.ucg_rate) * torch.ones(z.shape[0], device=z.device))
            z = keep[:, None] * z
            if tokens is not None:
                keep = torch.bernoulli(
                    (1.0 - self.ucg_rate) * torch.ones(tokens.shape[0], device=tokens.device)
                )
                tokens = expand_dims_like(keep, tokens) * tokens
        if self.unsqueeze_dim:
            z = z[:, None, :]
        if self.output_tokens:
            if self.repeat_to_max_len or self.pad_to_max_len:
                raise ConfigError("output_tokens cannot be combined with max-length padding")
            return tokens, z
        if self.repeat_to_max_len:
            z_seq = z[:, None, :] if z.dim() == 2 else z
            return repeat(z_seq, "b 1 d -> b n d", n=self.max_length), z
        if self.pad_to_max_len:
            pad = z.new_zeros(z.shape[0], self.max_length - z.shape[1], z.shape[2])
            z_pad = torch.cat((z, pad), 1)
            return z_pad, z_pad[:, 0, ...]
        return z

    def encode_with_vision_transformer(self, img: torch.Tensor) -> Any:
        """Images (B, 3, H, W), or crops (B, N, 3, H, W), -> embeddings (and tokens)."""
        if img.dim() == 5:
            if img.shape[1] != self.max_crops:
                raise ValueError(
                    f"got {img.shape[1]} crops per image, num_image_crops={self.max_crops}"
                )
            img = rearrange(img, "b n c h w -> (b n) c h w")
        out = self.model.visual(self.preprocess(img))
        x, tokens = out if self.output_tokens else (out, None)
        if self.max_crops > 0:
            x = rearrange(x, "(b n) d -> b n d", n=self.max_crops)
            # Drop each crop independently (between none and all of the sequence).
            keep = torch.bernoulli(
                (1.0 - self.ucg_rate) * torch.ones(x.shape[0], x.shape[1], 1, device=x.device)
            )
            x = keep * x
            if tokens is not None:
                tokens = rearrange(tokens, "(b n) t d -> b t (n d)", n=self.max_crops)
        if self.output_tokens:
            return x, tokens
        return x

    def encode(self, image: torch.Tensor) -> Any:
        """Same as calling the module."""
        return self(image)
