"""CLIP tokenizers built offline from the BPE vocabulary that open_clip ships.

Two conventions exist for the same BPE. transformers' ``CLIPTokenizer`` for
``openai/clip-vit-large-patch14`` cleans text with ``ftfy.fix_text``, collapses
whitespace, lower-cases, and pads with the end-of-text id 49407. open_clip also
unescapes HTML entities and pads with 0. Both truncate to ``[start] + 75 tokens +
[end]`` for a context of 77.
"""

from __future__ import annotations

import functools
import gzip
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

SOT_ID = 49406
EOT_ID = 49407
# Names of the two special tokens in transformers' CLIP vocabulary.
HF_SPECIAL_NAMES = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
# Number of BPE merges of the 49408-token CLIP vocabulary (256 bytes x 2 + merges + 2).
N_MERGES = 49152 - 256 - 2


@functools.cache
def simple_tokenizer() -> Any:
    """open_clip's ``SimpleTokenizer`` on its bundled vocabulary (ftfy + lower-casing)."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def _as_list(texts: str | Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    return [str(t) for t in texts]


@functools.cache
def _hf_pattern() -> Any:
    import regex

    return regex.compile(
        r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|"""
        r"""[\p{N}]|[^\s\p{L}\p{N}]+""",
        regex.IGNORECASE,
    )


def _hf_encode(text: str) -> list[int]:
    """BPE ids the way transformers' CLIP tokenizer cleans and splits text."""
    import ftfy
    import regex

    tok = simple_tokenizer()
    text = " ".join(ftfy.fix_text(text).split()).lower()
    ids: list[int] = []
    for piece in regex.findall(_hf_pattern(), text):
        if piece in ("<|startoftext|>", "<|endoftext|>"):
            ids.append(SOT_ID if "start" in piece else EOT_ID)
            continue
        piece = "".join(tok.byte_encoder[b] for b in piece.encode("utf-8"))
        ids.extend(tok.encoder[part] for part in tok.bpe(piece).split(" "))
    return ids


class CLIPBPETokenizer:
    """Text -> ``(B, context_length)`` CLIP token ids, truncated, padded with ``pad_id``.

    ``flavor`` picks the text cleaning: ``"hf"`` (transformers' CLIP tokenizer) or
    ``"open_clip"`` (``open_clip.tokenize``).
    """

    def __init__(
        self, context_length: int = 77, pad_id: int = 0, flavor: str = "open_clip"
    ) -> None:
        if context_length < 2:
            raise ValueError(f"context_length must be at least 2, got {context_length}")
        if flavor not in ("hf", "open_clip"):
            raise ValueError(f"flavor must be 'hf' or 'open_clip', got {flavor!r}")
        self.context_length = context_length
        self.pad_id = pad_id
        self.flavor = flavor

    def encode(self, text: str) -> list[int]:
        """BPE ids of ``text`` without start/end tokens."""
        if self.flavor == "hf":
            return _hf_encode(text)
        return simple_tokenizer().encode(text)

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        texts = _as_list(texts)
        out = torch.full((len(texts), self.context_length), self.pad_id, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [SOT_ID] + self.encode(text)[: self.context_length - 2] + [EOT_ID]
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out


def hf_clip_l_tokenizer(context_length: int = 77) -> CLIPBPETokenizer:
    """The tokenizer of ``openai/clip-vit-large-patch14`` (pads with end-of-text)."""
    return CLIPBPETokenizer(context_length, pad_id=EOT_ID, flavor="hf")


def open_clip_tokenizer(context_length: int = 77) -> CLIPBPETokenizer:
    """open_clip's ``tokenize`` (pads with 0)."""
    return CLIPBPETokenizer(context_length, pad_id=0, flavor="open_clip")


class HFTokenizer:
    """A transformers tokenizer loaded from a local folder, called like the others."""

    def __init__(self, path: str | Path, context_length: int) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.context_length = context_length

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        encoding = self.tokenizer(
            _as_list(texts),
            truncation=True,
            max_length=self.context_length,
            padding="max_length",
            return_tensors="pt",
        )
        return encoding["input_ids"]


TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "spiece.model", "tokenizer_config.json")


def has_tokenizer_files(path: str | Path) -> bool:
    """True if ``path`` is a folder holding transformers tokenizer files."""
    path = Path(path)
    return path.is_dir() and any((path / name).is_file() for name in TOKENIZER_FILES)


def clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """open_clip's CLIP vocabulary and merges, with transformers' special-token names."""
    from open_clip.tokenizer import default_bpe

    vocab = {HF_SPECIAL_NAMES.get(k, k): v for k, v in simple_tokenizer().encoder.items()}
    with gzip.open(default_bpe()) as f:
        lines = f.read().decode("utf-8").split("\n")[1 : N_MERGES + 1]
    return vocab, [tuple(line.split()) for line in lines]


def build_hf_clip_tokenizer(model_max_length: int = 77) -> Any:
    """transformers' ``CLIPTokenizer`` built offline from open_clip's vocabulary."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
