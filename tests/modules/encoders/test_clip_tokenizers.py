"""Offline CLIP tokenizers: published ids, open_clip.tokenize, transformers' CLIPTokenizer."""

from __future__ import annotations

import pytest
import torch

from sgm.modules.encoders._tokenizers import (
    CLIPBPETokenizer,
    build_hf_clip_tokenizer,
    hf_clip_l_tokenizer,
    open_clip_tokenizer,
)

CAT = [49406, 320, 1125, 539, 320, 2368, 49407]
PROMPTS = [
    "a photo of a cat",
    "",
    "Ünïcödé café 東京 🐱 naïve",
    " ".join(["word"] * 100),
    "Hello,   World!!\tline\nbreak",
    "it's a dog's life, isn't it?",
    "1234 5678 3.14",
    "a <|endoftext|> b",
]


@pytest.fixture(scope="module")
def hf_tokenizer():
    return build_hf_clip_tokenizer()


def hf_ids(tokenizer, prompts):
    return tokenizer(
        prompts, truncation=True, max_length=77, padding="max_length", return_tensors="pt"
    )["input_ids"]


def test_published_ids(no_network):
    clip_l = hf_clip_l_tokenizer()(["a photo of a cat", ""])
    assert clip_l.shape == (2, 77) and clip_l.dtype == torch.long
    assert clip_l[0, :7].tolist() == CAT and clip_l[0, 7:].eq(49407).all()
    assert clip_l[1, :2].tolist() == [49406, 49407] and clip_l[1, 2:].eq(49407).all()
    oc = open_clip_tokenizer()("a photo of a cat")
    assert oc[0, :7].tolist() == CAT and oc[0, 7:].eq(0).all()


def test_truncation_keeps_end_token():
    ids = hf_clip_l_tokenizer()([" ".join(["word"] * 100)])[0]
    assert ids[0] == 49406 and ids[-1] == 49407 and ids[1:-1].eq(2653).all()
    short = CLIPBPETokenizer(context_length=5, pad_id=0)("a photo of a cat")[0]
    assert short.tolist() == [49406, 320, 1125, 539, 49407]


def test_open_clip_flavor_equals_open_clip_tokenize():
    import open_clip

    prompts = PROMPTS + ["fish &amp; chips", "ﬁne ｆｕｌｌ"]
    assert torch.equal(open_clip_tokenizer()(prompts), open_clip.tokenize(prompts))


def test_clip_l_equals_transformers_tokenizer(no_network, hf_tokenizer):
    assert torch.equal(hf_clip_l_tokenizer()(PROMPTS), hf_ids(hf_tokenizer, PROMPTS))


def test_sdxl_embedders_differ_only_in_padding():
    clip_l = hf_clip_l_tokenizer()(PROMPTS[:3])
    bigg = open_clip_tokenizer()(PROMPTS[:3])
    content = bigg != 0
    assert torch.equal(clip_l[content], bigg[content])
    assert clip_l[~content].eq(49407).all()


def test_ftfy_cleaning_like_the_original_clip_tokenizer(hf_tokenizer):
    # The original CLIP tokenizer (and open_clip) clean text with ftfy: ligatures and
    # full-width letters become plain letters. transformers' fast tokenizer does not.
    text = ["ﬁne ｆｕｌｌ"]
    ours = hf_clip_l_tokenizer()(text)
    plain = hf_clip_l_tokenizer()(["fine full"])
    assert torch.equal(ours, plain)
    assert not torch.equal(ours, hf_ids(hf_tokenizer, text))
    # ftfy also unescapes HTML entities in text without tags.
    entity = hf_clip_l_tokenizer()(["fish &amp; chips"])
    assert torch.equal(entity, hf_clip_l_tokenizer()(["fish & chips"]))
