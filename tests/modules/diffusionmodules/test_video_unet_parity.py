"""VideoUNet (SVD) against diffusers' UNetSpatioTemporalConditionModel, same weights.

diffusers ships no SVD checkpoint converter, so the sgm -> diffusers key map is the
library's (``sgm.convert.svd_keys``), the layout of diffusers' repository script
``convert_svd_to_diffusers.py`` (``input_blocks.N.M`` -> ``down_blocks.L.resnets.I`` ...).
Loading strictly in both directions proves the map covers every key.
"""

from __future__ import annotations

import pytest
import torch

from sgm.convert.svd_keys import svd_unet_key_map as make_key_map
from sgm.modules.diffusionmodules.util import timestep_embedding
from sgm.modules.diffusionmodules.video_model import VideoUNet

pytest.importorskip("diffusers")

MC, MULT, NRB, HEAD_CH, CTX, ADM = 32, (1, 2, 2), 1, 16, 24, 3 * 16

sgm_to_diffusers = make_key_map(NRB)


def _models():
    from diffusers import UNetSpatioTemporalConditionModel

    ours = VideoUNet(
        in_channels=8,
        out_channels=4,
        model_channels=MC,
        num_res_blocks=NRB,
        attention_resolutions=[1, 2],
        channel_mult=list(MULT),
        num_head_channels=HEAD_CH,
        use_linear_in_transformer=True,
        transformer_depth=1,
        context_dim=CTX,
        num_classes="sequential",
        adm_in_channels=ADM,
        extra_ff_mix_layer=True,
        use_spatial_context=True,
        merge_strategy="learned_with_images",
        video_kernel_size=[3, 1, 1],
    )
    theirs = UNetSpatioTemporalConditionModel(
        in_channels=8,
        out_channels=4,
        block_out_channels=tuple(MC * m for m in MULT),
        down_block_types=("CrossAttnDownBlockSpatioTemporal",) * 2 + ("DownBlockSpatioTemporal",),
        up_block_types=("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * 2,
        layers_per_block=NRB,
        cross_attention_dim=CTX,
        addition_time_embed_dim=16,
        projection_class_embeddings_input_dim=ADM,
        num_attention_heads=tuple(MC * m // HEAD_CH for m in MULT),
    )
    return ours.eval(), theirs.eval()


def _randomize(model: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.state_dict().items():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if p.ndim > 1 else 0.1))
            if name.endswith("mix_factor"):
                p.copy_(torch.randn(p.shape, generator=gen))


@pytest.fixture(scope="module")
def pair():
    ours, theirs = _models()
    _randomize(ours)
    mapped = {sgm_to_diffusers(k): v for k, v in ours.state_dict().items()}
    theirs.load_state_dict(mapped, strict=True)
    # sgm normalises every residual block with eps 1e-5; diffusers uses 1e-6 in some.
    ours_modules = dict(ours.named_modules())
    for name, module in theirs.named_modules():
        if isinstance(module, torch.nn.GroupNorm):
            sgm_name = next(k for k in ours.state_dict() if sgm_to_diffusers(k) == f"{name}.weight")
            module.eps = ours_modules[sgm_name.rsplit(".", 1)[0]].eps
    return ours, theirs


def test_key_map_is_a_bijection(pair):
    ours, theirs = pair
    mapped = {sgm_to_diffusers(k) for k in ours.state_dict()}
    assert mapped == set(theirs.state_dict())
    assert len(mapped) == len(ours.state_dict())


@pytest.mark.parametrize("frames", [1, 3, 5])
def test_forward_matches_diffusers(pair, frames):
    ours, theirs = pair
    b, h, w = 2, 8, 8
    gen = torch.Generator().manual_seed(frames)
    x = torch.randn(b, frames, 8, h, w, generator=gen)
    t = torch.tensor([3.7, 811.0])
    ctx = torch.randn(b, 1, CTX, generator=gen)
    ids = torch.tensor([[6.0, 127.0, 0.02], [24.0, 30.0, 0.5]])
    with torch.no_grad():
        expected = theirs(x, t, ctx, ids).sample
        y = torch.cat([timestep_embedding(ids[:, i], 16) for i in range(3)], dim=1)
        got = ours(
            x.flatten(0, 1),
            t.repeat_interleave(frames),
            context=ctx.repeat_interleave(frames, dim=0),
            y=y.repeat_interleave(frames, dim=0),
            num_video_frames=frames,
            image_only_indicator=torch.zeros(b, frames),
        )
    got = got.reshape(b, frames, 4, h, w)
    assert expected.abs().max() > 0.3  # a non-trivial output
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=0)
