"""The VAE against diffusers' AutoencoderKL, weights converted by diffusers' own converter."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from sgm.models.autoencoder import AutoencoderKL, AutoencoderKLModeOnly
from sgm.modules.diffusionmodules.model import (
    AttnBlock,
    IdentityAttn,
    LinAttnBlock,
    MemoryEfficientAttnBlock,
    MemoryEfficientCrossAttentionWrapper,
    make_attn,
)
from sgm.util import instantiate_from_config

ROOT = Path(__file__).resolve().parents[3]
TINY = dict(
    double_z=True,
    z_channels=4,
    resolution=32,
    in_channels=3,
    out_ch=3,
    ch=32,
    ch_mult=[1, 2],
    num_res_blocks=1,
    attn_resolutions=[],
    dropout=0.0,
)


def _diffusers_vae(state_dict, ddconfig, image_size):
    from diffusers import AutoencoderKL as DiffusersAutoencoderKL
    from diffusers.loaders.single_file_utils import (
        convert_ldm_vae_checkpoint,
        create_vae_diffusers_config_from_ldm,
    )

    ckpt = {f"first_stage_model.{k}": v for k, v in state_dict.items()}
    original = {
        "model": {
            "params": {
                "scale_factor": 0.18215,
                "first_stage_config": {"params": {"ddconfig": ddconfig}},
            }
        }
    }
    config = create_vae_diffusers_config_from_ldm(original, ckpt, image_size=image_size)
    converted = convert_ldm_vae_checkpoint(ckpt, config)
    return DiffusersAutoencoderKL, config, converted


def _randomize(model):
    """Random weights everywhere, norm scales around 1, so no layer is an identity."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
                if isinstance(module, torch.nn.GroupNorm) and name == "weight":
                    p.add_(1.0)
    return model


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("attn_type", ["vanilla", "vanilla-xformers"])
def test_encode_decode_match_diffusers(attn_type):
    dd = {**TINY, "attn_type": attn_type}
    ours = _randomize(
        AutoencoderKLModeOnly(embed_dim=4, ddconfig=dd, lossconfig={"target": "torch.nn.Identity"})
    ).eval()
    cls, config, converted = _diffusers_vae(ours.state_dict(), dd, image_size=32)
    ref = cls(**config).eval()
    ref.load_state_dict(converted, strict=True)
    x = torch.randn(2, 3, 32, 32)
    z = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        ref_dist = ref.encode(x).latent_dist
        torch.testing.assert_close(ours.encode_moments(x), ref_dist.parameters, atol=1e-4, rtol=0)
        torch.testing.assert_close(ours.encode(x), ref_dist.mode(), atol=1e-4, rtol=0)
        torch.testing.assert_close(ours.decode(z), ref.decode(z).sample, atol=1e-4, rtol=0)


def test_sampling_encoder_draws_from_the_posterior():
    model = _randomize(
        AutoencoderKL(embed_dim=4, ddconfig=TINY, lossconfig={"target": "torch.nn.Identity"})
    )
    x = torch.randn(1, 3, 32, 32).expand(64, -1, -1, -1)
    with torch.no_grad():
        mean, logvar = model.encode_moments(x[:1]).chunk(2, dim=1)
        z = model.encode(x)
    std = torch.exp(0.5 * logvar.clamp(-30, 20))
    normalised = (z - mean) / std
    assert abs(normalised.mean().item()) < 0.05
    assert abs(normalised.std().item() - 1.0) < 0.05


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("config", ["sd_2_1.yaml", "sd_xl_base.yaml", "sd_xl_refiner.yaml"])
def test_full_size_first_stage_keys_match_diffusers(config):
    cfg = OmegaConf.load(ROOT / "configs" / "inference" / config)
    first_stage = cfg.model.params.first_stage_config
    with torch.device("meta"):
        ours = instantiate_from_config(first_stage)
    state = ours.state_dict()
    ddconfig = OmegaConf.to_container(first_stage.params.ddconfig)
    cls, dconfig, converted = _diffusers_vae(state, ddconfig, image_size=256)
    with torch.device("meta"):
        ref = cls(**dconfig)
    ref_state = ref.state_dict()
    assert set(converted) == set(ref_state)
    assert len(converted) == len(state)
    for key, value in converted.items():
        assert value.shape == ref_state[key].shape, key
    # The SD/SDXL VAE has 83,653,863 parameters.
    assert sum(p.numel() for p in ours.parameters()) == 83_653_863
    assert sum(p.numel() for p in ref.parameters()) == 83_653_863


def test_make_attn_dispatches_on_attn_type():
    assert type(make_attn(32, "vanilla")) is AttnBlock
    assert type(make_attn(32, "vanilla-xformers")) is MemoryEfficientAttnBlock
    assert type(make_attn(32, "linear")) is LinAttnBlock
    assert type(make_attn(32, "none")) is IdentityAttn
    cross = make_attn(32, "memory-efficient-cross-attn", {"heads": 2, "dim_head": 16})
    assert type(cross) is MemoryEfficientCrossAttentionWrapper
    x = torch.randn(2, 32, 4, 4)
    assert cross(x).shape == x.shape
    with pytest.raises(ValueError, match="attn_type"):
        make_attn(32, "flash")


def test_attn_block_is_single_head_softmax_attention():
    block = _randomize(AttnBlock(32)).eval()
    x = torch.randn(2, 32, 4, 5)
    h = block.norm(x)
    q, k, v = (getattr(block, n)(h).flatten(2) for n in "qkv")  # (B, C, N)
    weights = torch.softmax(q.transpose(1, 2) @ k / 32**0.5, dim=-1)  # (B, N, N)
    expected = x + block.proj_out((v @ weights.transpose(1, 2)).reshape(x.shape))
    efficient = MemoryEfficientAttnBlock(32).eval()
    efficient.load_state_dict(block.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(efficient(x), expected, atol=1e-5, rtol=1e-5)


def test_a_resnet_block_handed_its_input_gives_the_same_numbers():
    from diffusers.models.resnet import ResnetBlock2D

    from sgm.modules.diffusionmodules.model import Decoder, ResnetBlock

    ours = _randomize(ResnetBlock(in_channels=64, out_channels=32, temb_channels=0)).eval()
    theirs = ResnetBlock2D(in_channels=64, out_channels=32, temb_channels=None, eps=1e-6).eval()
    state = {k.replace("nin_shortcut", "conv_shortcut"): v for k, v in ours.state_dict().items()}
    theirs.load_state_dict(state)
    x = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        expected = theirs(x.clone(), None)
        kept = ours(x)
        handed = ours(x.clone(), None, consume_input=True)
    torch.testing.assert_close(kept, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(handed, kept)
    # the decoder hands over only its own intermediates, never the latents
    decoder = _randomize(Decoder(**TINY)).eval()
    z = torch.randn(1, 4, 16, 16)
    z_before = z.clone()
    with torch.no_grad():
        decoder(z)
    assert torch.equal(z, z_before)
