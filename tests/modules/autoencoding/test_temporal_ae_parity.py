"""SVD's VideoDecoder against diffusers' TemporalDecoder (AutoencoderKLTemporalDecoder).

diffusers ships no converter for this decoder; the key map is the library's
(``sgm.convert.svd_keys``).
"""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from sgm.convert.svd_keys import convert_video_decoder as to_diffusers
from sgm.modules.autoencoding.temporal_ae import VideoDecoder, VideoResBlock
from sgm.modules.diffusionmodules.model import AttnBlock, Decoder
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
    num_res_blocks=2,
    attn_resolutions=[],
    dropout=0.0,
)
# diffusers builds its mid block from layers_per_block resnets, so num_res_blocks=2 here.


def _randomize(model):
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
                if isinstance(module, torch.nn.GroupNorm) and name == "weight":
                    p.add_(1.0)
    return model


@pytest.fixture(scope="module")
def decoders():
    from diffusers.models.autoencoders.autoencoder_kl_temporal_decoder import TemporalDecoder

    torch.manual_seed(0)
    ours = _randomize(VideoDecoder(**TINY, video_kernel_size=[3, 1, 1])).eval()
    ref = TemporalDecoder(
        in_channels=4, out_channels=3, block_out_channels=(32, 64), layers_per_block=2
    ).eval()
    ref.load_state_dict(to_diffusers(ours.state_dict(), len(TINY["ch_mult"])), strict=True)
    return ours, ref


@pytest.mark.parametrize("frames", [1, 3, 5])
def test_video_decoder_matches_diffusers(decoders, frames):
    ours, ref = decoders
    z = torch.randn(2 * frames, 4, 8, 8)
    with torch.no_grad():
        expected = ref(z, image_only_indicator=torch.zeros(2, frames), num_frames=frames)
        got = ours(z, timesteps=frames)
    assert got.shape == (2 * frames, 3, 16, 16)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_frames_are_mixed_within_a_clip_only(decoders):
    ours, _ = decoders
    z = torch.randn(6, 4, 8, 8)
    z2 = z.clone()
    z2[1] += 1.0  # clip 0 = frames 0..2, clip 1 = frames 3..5
    with torch.no_grad():
        a, b = ours(z, timesteps=3), ours(z2, timesteps=3)
    assert (a[0] - b[0]).abs().max() > 1e-3
    torch.testing.assert_close(a[3:], b[3:], atol=1e-6, rtol=0)


def test_svd_first_stage_keys_match_diffusers():
    from diffusers import AutoencoderKLTemporalDecoder
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    cfg = OmegaConf.load(
        ROOT / "configs" / "inference" / "svd.yaml"
    ).model.params.first_stage_config
    with torch.device("meta"):
        ours = instantiate_from_config(cfg)
        ref = AutoencoderKLTemporalDecoder(
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=4,
            down_block_types=("DownEncoderBlock2D",) * 4,
        )
    state = ours.state_dict()
    assert not any(k.startswith(("quant_conv", "post_quant_conv")) for k in state)
    assert "decoder.conv_out.time_mix_conv.weight" in state
    assert state["decoder.up.0.block.0.time_stack.in_layers.2.weight"].shape == (128, 128, 3, 1, 1)
    encoder = {k: v for k, v in state.items() if k.startswith("encoder.")}
    converted = convert_ldm_vae_checkpoint(
        encoder,
        {
            "block_out_channels": [128, 256, 512, 512],
            "layers_per_block": 2,
            "down_block_types": ["DownEncoderBlock2D"] * 4,
            "up_block_types": ["UpDecoderBlock2D"] * 4,
        },
    )
    decoder = {k[len("decoder.") :]: v for k, v in state.items() if k.startswith("decoder.")}
    converted.update({f"decoder.{k}": v for k, v in to_diffusers(decoder, 4).items()})
    ref_state = {k: v for k, v in ref.state_dict().items() if not k.startswith("quant_conv")}
    assert set(converted) == set(ref_state)
    for key, value in converted.items():
        assert value.shape == ref_state[key].shape, key


def _video_like_plain(time_mode, dd):
    """A VideoDecoder whose every temporal path is switched off by its weights."""
    plain = _randomize(Decoder(**dd)).eval()
    video = VideoDecoder(
        **dd, time_mode=time_mode, merge_strategy="fixed", alpha=1.0, video_kernel_size=[3, 1, 1]
    ).eval()
    state = video.state_dict()
    state.update({k: v for k, v in plain.state_dict().items() if k in state})
    for key in [k for k in state if "time_mix_conv" in k]:
        state[key] = torch.zeros_like(state[key])
        if key.endswith("weight"):  # identity kernel at the centre frame
            state[key][:, :, 1, 0, 0] = torch.eye(state[key].shape[0])
    video.load_state_dict(state)
    for module in video.modules():
        if isinstance(module, VideoResBlock):
            module.mix_factor.zero_()  # VideoResBlock: keep the spatial path
    return plain, video


@pytest.mark.parametrize("time_mode", ["attn-only", "all"])
def test_attention_time_modes_reduce_to_the_spatial_decoder(time_mode):
    """VideoBlock output is alpha * spatial + (1 - alpha) * temporal: alpha=1 -> Decoder."""
    dd = {**TINY, "attn_resolutions": [16]}
    plain, video = _video_like_plain(time_mode, dd)
    attn_blocks = [m for m in video.modules() if isinstance(m, AttnBlock)]
    assert len(attn_blocks) == 1 + dd["num_res_blocks"] + 1
    assert all(hasattr(m, "time_mix_block") for m in attn_blocks)
    z = torch.randn(4, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(video(z, timesteps=2), plain(z), atol=1e-5, rtol=0)


@pytest.mark.parametrize("time_mode", ["attn-only", "all"])
def test_temporal_attention_mixes_frames_within_a_clip(time_mode):
    dd = {**TINY, "attn_resolutions": [16]}
    video = _randomize(VideoDecoder(**dd, time_mode=time_mode, alpha=0.0)).eval()
    z = torch.randn(6, 4, 8, 8)
    z2 = z.clone()
    z2[1] += 1.0
    with torch.no_grad():
        a, b = video(z, timesteps=3), video(z2, timesteps=3)
    assert (a[0] - b[0]).abs().max() > 1e-3
    torch.testing.assert_close(a[3:], b[3:], atol=1e-6, rtol=0)
