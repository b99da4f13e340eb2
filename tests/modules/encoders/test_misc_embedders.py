"""Small embedders, T5 from local folders, and the SD 2.x checkpoint layout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sgm.errors import ConfigError
from sgm.modules.encoders.modules import (
    ClassEmbedder,
    ClassEmbedderForMultiCond,
    ConcatTimestepEmbedderND,
    FrozenByT5Embedder,
    FrozenT5Embedder,
    GeneralConditioner,
    IdentityEncoder,
    InceptionV3,
    LowScaleEncoder,
    SpatialRescaler,
)


def test_concat_timestep_embedder_closed_form():
    x = torch.tensor([[3.0, 0.5], [10.0, 250.0]])
    out = ConcatTimestepEmbedderND(outdim=6)(x)
    assert out.shape == (2, 12)
    freqs = torch.tensor([10000 ** (-i / 3) for i in range(3)])
    for b in range(2):
        for d in range(2):
            args = x[b, d] * freqs
            expected = torch.cat([torch.cos(args), torch.sin(args)])
            torch.testing.assert_close(out[b, 6 * d : 6 * d + 6], expected, atol=1e-5, rtol=0)
    one_d = ConcatTimestepEmbedderND(outdim=6)(x[:, 0])
    torch.testing.assert_close(one_d, out[:, :6])
    assert ConcatTimestepEmbedderND(4).state_dict() == {}


def test_class_embedders():
    embedder = ClassEmbedder(embed_dim=5, n_classes=10, add_sequence_dim=True)
    labels = torch.tensor([0, 9, 3])
    out = embedder(labels)
    assert out.shape == (3, 1, 5)
    torch.testing.assert_close(out[:, 0], embedder.embedding.weight[labels])
    assert list(embedder.state_dict()) == ["embedding.weight"]
    embedder.input_key = "cls"
    uc = embedder.get_unconditional_conditioning(4)
    assert torch.equal(uc["cls"], torch.full((4,), 9))

    multi = ClassEmbedderForMultiCond(embed_dim=5, n_classes=10)
    multi.input_key = "cls"
    batch = {"cls": [labels], "other": 1}
    out = multi(batch)
    assert batch["cls"][0] is labels and out["other"] == 1
    torch.testing.assert_close(out["cls"][0], multi.embedding.weight[labels])


def test_identity_and_rescaler():
    x = torch.randn(2, 3, 8, 8)
    assert IdentityEncoder()(x) is x
    rescaler = SpatialRescaler(n_stages=2, method="bilinear", multiplier=0.5)
    expected = F.interpolate(
        F.interpolate(x, scale_factor=0.5, mode="bilinear"), scale_factor=0.5, mode="bilinear"
    )
    torch.testing.assert_close(rescaler(x), expected)
    mapped = SpatialRescaler(n_stages=1, in_channels=3, out_channels=5, kernel_size=3)
    assert mapped(x).shape == (2, 5, 4, 4)
    assert set(mapped.state_dict()) == {"channel_mapper.weight"}
    video = SpatialRescaler(n_stages=1, multiplier=0.5, wrap_video=True)
    assert video(torch.randn(2, 3, 4, 8, 8)).shape == (2, 3, 4, 4, 4)
    with pytest.raises(ConfigError, match="method"):
        SpatialRescaler(method="cubic")


class _HalfEncoder(nn.Module):
    def encode(self, x):
        return x[:, :2]

    def decode(self, z):
        return z


def test_low_scale_encoder_schedule_and_noise():
    encoder = LowScaleEncoder(
        {"target": "torch.nn.Identity"},
        linear_start=1e-4,
        linear_end=2e-2,
        timesteps=1000,
        max_noise_level=250,
        output_size=4,
    )
    betas = torch.linspace(1e-4**0.5, 2e-2**0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    torch.testing.assert_close(encoder.alphas_cumprod, alphas_cumprod.float())
    torch.testing.assert_close(
        encoder.sqrt_one_minus_alphas_cumprod, (1 - alphas_cumprod).sqrt().float()
    )
    encoder.model = _HalfEncoder()
    z, level = encoder(torch.randn(3, 4, 8, 8))
    assert z.shape == (3, 2, 4, 4) and level.shape == (3,) and level.max() < 250
    x0, noise, t = torch.randn(2, 2, 4, 4), torch.randn(2, 2, 4, 4), torch.tensor([0, 999])
    noisy = encoder.q_sample(x0, t, noise)
    a = alphas_cumprod[t].float()[:, None, None, None]
    torch.testing.assert_close(noisy, a.sqrt() * x0 + (1 - a).sqrt() * noise)


def test_inception_needs_pytorch_fid(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "pytorch_fid", None)
    with pytest.raises(ImportError, match="pytorch-fid"):
        InceptionV3()


@pytest.fixture(scope="module")
def byt5_dir(tmp_path_factory):
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    folder = tmp_path_factory.mktemp("tiny_byt5")
    config = T5Config(vocab_size=384, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    torch.manual_seed(4)
    T5EncoderModel(config).save_pretrained(folder)
    ByT5Tokenizer().save_pretrained(folder)
    return folder


@torch.no_grad()
@pytest.mark.parametrize("cls", [FrozenT5Embedder, FrozenByT5Embedder])
def test_t5_from_local_folder_matches_transformers(no_network, byt5_dir, cls):
    from transformers import ByT5Tokenizer, T5EncoderModel

    embedder = cls(version=str(byt5_dir), max_length=16)
    prompts = ["a photo of a cat", "ünïcode"]
    tokens = ByT5Tokenizer.from_pretrained(byt5_dir)(
        prompts, truncation=True, max_length=16, padding="max_length", return_tensors="pt"
    )["input_ids"]
    reference = T5EncoderModel.from_pretrained(byt5_dir, local_files_only=True).eval()
    expected = reference(input_ids=tokens).last_hidden_state
    torch.testing.assert_close(embedder(prompts), expected, atol=1e-5, rtol=0)
    assert all(k.startswith("transformer.") for k in embedder.state_dict())


def test_t5_without_local_folder_says_what_is_missing(no_network, tmp_path):
    with pytest.raises(ConfigError, match="local folder.*missing: the folder"):
        FrozenT5Embedder()
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="missing: tokenizer files"):
        FrozenByT5Embedder(version=str(tmp_path))


def test_sd21_checkpoint_layout_loads_strictly(tiny_arch, tmp_path):
    """SD 2.x files hold the text encoder as ``cond_stage_model.model.*``."""
    import open_clip
    from safetensors.torch import save_file

    from sgm.checkpoint import load_checkpoint_into

    class Engine(nn.Module):
        def __init__(self):
            super().__init__()
            self.conditioner = GeneralConditioner(
                [
                    {
                        "target": "sgm.modules.encoders.modules.FrozenOpenCLIPEmbedder",
                        "params": {"arch": tiny_arch, "layer": "penultimate"},
                        "input_key": "txt",
                    }
                ]
            )

    reference = open_clip.create_model(tiny_arch, pretrained=None)
    legacy = {
        "cond_stage_model.model." + k: v.contiguous()
        for k, v in reference.state_dict().items()
        if not k.startswith("visual.")
    }
    path = tmp_path / "v2-1_tiny.safetensors"
    save_file(legacy, path)
    engine = Engine()
    report = load_checkpoint_into(engine, path)
    assert report.ok
    loaded = engine.conditioner.embedders[0].model.state_dict()
    for key, value in legacy.items():
        assert torch.equal(loaded[key.removeprefix("cond_stage_model.model.")], value)


def test_gaussian_encoder_posterior_tokens():
    from sgm.modules.encoders.modules import GaussianEncoder

    encoder = GaussianEncoder(
        weight=0.5,
        ch=32,
        out_ch=3,
        ch_mult=[1, 2],
        num_res_blocks=1,
        attn_resolutions=[],
        in_channels=3,
        resolution=16,
        z_channels=4,
        double_z=True,
    )
    log, z = encoder(torch.randn(2, 3, 16, 16))
    assert z.shape == (2, 8 * 8, 4)
    assert log["weight"] == 0.5 and torch.equal(log["loss"], log["kl_loss"])
