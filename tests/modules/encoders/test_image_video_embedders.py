"""Image and video conditioners against open_clip / kornia / the VAE called directly."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sgm.modules.encoders.modules import (
    FrozenOpenCLIPImageEmbedder,
    FrozenOpenCLIPImagePredictionEmbedder,
    VideoPredictionEmbedderWithEncoder,
)

MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]


@pytest.fixture(scope="module")
def reference_clip(tiny_arch):
    import open_clip

    torch.manual_seed(3)
    return open_clip.create_model(tiny_arch, pretrained=None).eval()


@pytest.fixture(scope="module")
def image_embedder(tiny_arch, reference_clip):
    embedder = FrozenOpenCLIPImageEmbedder(arch=tiny_arch)
    weights = {
        k: v for k, v in reference_clip.state_dict().items() if not k.startswith("transformer.")
    }
    embedder.model.load_state_dict(weights)
    return embedder


def test_image_embedder_keys_and_buffers(image_embedder):
    state = image_embedder.state_dict()
    assert not any(k.startswith("model.transformer.") for k in state)
    assert "model.visual.conv1.weight" in state and "model.token_embedding.weight" in state
    assert "mean" not in state and "std" not in state  # non-persistent
    torch.testing.assert_close(image_embedder.mean, MEAN.flatten())


@torch.no_grad()
def test_image_embedder_upsampling_matches_open_clip(no_network, image_embedder, reference_clip):
    images = torch.rand(3, 3, 64, 96) * 2 - 1
    # Upsampling: antialiasing has no effect, plain bicubic with aligned corners.
    x = F.interpolate(images, (224, 224), mode="bicubic", align_corners=True)
    expected = reference_clip.encode_image(((x + 1) / 2 - MEAN) / STD)
    out = image_embedder(images)
    assert out.shape == (3, 32)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


@torch.no_grad()
def test_image_embedder_downsampling_uses_kornia_antialias(image_embedder, reference_clip):
    import kornia

    images = torch.rand(2, 3, 320, 448) * 2 - 1
    x = kornia.geometry.resize(
        images, (224, 224), interpolation="bicubic", align_corners=True, antialias=True
    )
    expected = reference_clip.encode_image(((x + 1) / 2 - MEAN) / STD)
    torch.testing.assert_close(image_embedder(images), expected, atol=1e-5, rtol=0)
    plain = F.interpolate(images, (224, 224), mode="bicubic", align_corners=True)
    assert not torch.allclose(x, plain, atol=1e-3)  # the antialias path really differs


@torch.no_grad()
def test_prediction_embedder_layout(tiny_arch, image_embedder):
    config = {
        "target": "sgm.modules.encoders.modules.FrozenOpenCLIPImageEmbedder",
        "params": {"arch": tiny_arch},
    }
    embedder = FrozenOpenCLIPImagePredictionEmbedder(config, n_cond_frames=2, n_copies=3)
    embedder.open_clip.load_state_dict(image_embedder.state_dict())
    frames = torch.rand(4, 3, 32, 32) * 2 - 1  # 2 samples x 2 frames
    out = embedder(frames)
    per_frame = image_embedder(frames)
    assert out.shape == (6, 2, 32)
    torch.testing.assert_close(out[0], per_frame[0:2])
    torch.testing.assert_close(out[2], per_frame[0:2])
    torch.testing.assert_close(out[3], per_frame[2:4])
    assert "open_clip.model.visual.conv1.weight" in embedder.state_dict()


def tiny_vae_config():
    return {
        "target": "sgm.models.autoencoder.AutoencoderKLModeOnly",
        "params": {
            "embed_dim": 4,
            "ddconfig": {
                "double_z": True,
                "z_channels": 4,
                "resolution": 16,
                "in_channels": 3,
                "out_ch": 3,
                "ch": 32,
                "ch_mult": [1, 2],
                "num_res_blocks": 1,
                "attn_resolutions": [],
                "dropout": 0.0,
            },
            "lossconfig": {"target": "torch.nn.Identity"},
        },
    }


@torch.no_grad()
def test_video_embedder_single_frame_copies():
    embedder = VideoPredictionEmbedderWithEncoder(
        n_cond_frames=1,
        n_copies=3,
        encoder_config=tiny_vae_config(),
        is_ae=True,
        scale_factor=0.18215,
        en_and_decode_n_samples_a_time=1,
    ).eval()
    frames = torch.rand(2, 3, 16, 16) * 2 - 1
    latents = embedder.encoder.encode(frames) * 0.18215
    out = embedder(frames)
    assert out.shape == (6, 4, 8, 8)
    for i in range(6):
        torch.testing.assert_close(out[i], latents[i // 3], atol=1e-6, rtol=0)
    assert {k.split(".")[1] for k in embedder.state_dict()} == {
        "encoder",
        "decoder",
        "quant_conv",
        "post_quant_conv",
    }


@torch.no_grad()
def test_video_embedder_many_frames_with_sigma_cond():
    embedder = VideoPredictionEmbedderWithEncoder(
        n_cond_frames=4,
        n_copies=1,
        encoder_config=tiny_vae_config(),
        is_ae=True,
        sigma_sampler_config={"target": "sgm.modules.diffusionmodules.sigma_sampling.ZeroSampler"},
        sigma_cond_config={
            "target": "sgm.modules.encoders.modules.ConcatTimestepEmbedderND",
            "params": {"outdim": 256},
        },
        en_and_decode_n_samples_a_time=3,
    ).eval()
    frames = torch.rand(8, 3, 16, 16) * 2 - 1  # 2 samples x 4 frames
    latents, sigma_emb = embedder(frames)
    assert latents.shape == (8, 4, 8, 8)
    # sigma = 1e-5: the noise barely moves the latents.
    torch.testing.assert_close(latents, embedder.encoder.encode(frames), atol=1e-3, rtol=0)
    # One noise-level row per conditioning frame, like the latents.
    expected = torch.cat([torch.ones(8, 128), torch.zeros(8, 128)], 1)  # cos/sin(1e-5 f)
    torch.testing.assert_close(sigma_emb, expected, atol=1e-4, rtol=0)


def _sigma_embedding(sigmas: torch.Tensor, dim: int = 256) -> torch.Tensor:
    freqs = torch.exp(-math.log(10000) * torch.arange(dim // 2) / (dim // 2))
    args = sigmas[:, None].double() * freqs[None].double()
    return torch.cat([torch.cos(args), torch.sin(args)], 1).float()


@pytest.mark.parametrize("n_cond_frames, n_copies, rows_per_sample", [(3, 2, 3), (1, 4, 4)])
@torch.no_grad()
def test_video_embedder_sigma_rows_follow_the_latents(n_cond_frames, n_copies, rows_per_sample):
    embedder = VideoPredictionEmbedderWithEncoder(
        n_cond_frames=n_cond_frames,
        n_copies=n_copies,
        encoder_config=tiny_vae_config(),
        is_ae=True,
        sigma_sampler_config={"target": "sgm.modules.diffusionmodules.sigma_sampling.ZeroSampler"},
        sigma_cond_config={
            "target": "sgm.modules.encoders.modules.ConcatTimestepEmbedderND",
            "params": {"outdim": 256},
        },
    ).eval()
    sigmas = torch.tensor([0.25, 2.0])  # one noise level per sample
    embedder.sigma_sampler = lambda n: sigmas[:n]
    latents, sigma_emb = embedder(torch.rand(2 * n_cond_frames, 3, 16, 16) * 2 - 1)
    assert latents.shape[0] == sigma_emb.shape[0] == 2 * rows_per_sample
    expected = _sigma_embedding(sigmas).repeat_interleave(rows_per_sample, dim=0)
    torch.testing.assert_close(sigma_emb, expected, atol=1e-5, rtol=0)
