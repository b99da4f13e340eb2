"""Gradient checkpointing in every UNet: the same gradients as the unchecked network (the
oracle), and every residual and transformer block, spatial and temporal, recomputed
during backward (non-reentrant checkpoints)."""

from __future__ import annotations

import inspect

import pytest
import torch

from sgm.modules.diffusionmodules.openaimodel import UNetModel
from sgm.modules.diffusionmodules.video_model import SpatialUNetModelWithTime, VideoUNet

COMMON = dict(
    model_channels=32,
    num_res_blocks=1,
    attention_resolutions=[1, 2],
    channel_mult=[1, 2],
    num_head_channels=16,
    use_linear_in_transformer=True,
    transformer_depth=1,
    context_dim=24,
    num_classes="sequential",
)
VIDEO = dict(
    COMMON, in_channels=8, out_channels=4, extra_ff_mix_layer=True, use_spatial_context=True
)


def _sdxl(use_checkpoint):
    return UNetModel(
        **COMMON,
        in_channels=4,
        out_channels=4,
        adm_in_channels=16,
        use_spatial_transformer=True,
        use_checkpoint=use_checkpoint,
    )


def _sdxl_inputs(gen):
    return dict(
        x=torch.randn(2, 4, 8, 8, generator=gen),
        timesteps=torch.rand(2, generator=gen) * 900,
        context=torch.randn(2, 5, 24, generator=gen),
        y=torch.randn(2, 16, generator=gen),
    )


def _svd(use_checkpoint):
    return VideoUNet(
        **VIDEO,
        adm_in_channels=40,
        merge_strategy="learned_with_images",
        video_kernel_size=[3, 1, 1],
        use_checkpoint=use_checkpoint,
    )


def _svd_inputs(gen, frames=3):
    return dict(
        x=torch.randn(2 * frames, 8, 8, 8, generator=gen),
        timesteps=torch.rand(2 * frames, generator=gen),
        context=torch.randn(2 * frames, 1, 24, generator=gen),
        y=torch.randn(2 * frames, 40, generator=gen),
        num_video_frames=frames,
        image_only_indicator=torch.zeros(2, frames),
    )


def _sv4d(use_checkpoint):
    return SpatialUNetModelWithTime(
        **{k: v for k, v in VIDEO.items() if k != "num_classes"},
        num_classes="sequential",
        adm_in_channels=128,
        legacy=False,
        use_spatial_transformer=True,
        use_motion_attention=True,
        motion_context_dim=4,
        time_block_merge_strategy="learned_with_images",
        time_kernel_size=[3, 1, 1],
        time_mix_legacy=False,
        use_checkpoint=use_checkpoint,
    )


def _sv4d_inputs(gen, b=1, t=2, v=2, h=8):
    n = b * t * v
    return dict(
        x=torch.randn(n, 8, h, h, generator=gen),
        timesteps=torch.rand(n, generator=gen),
        context=torch.randn(b, t, 24, generator=gen),
        y=torch.randn(n, 128, generator=gen),
        cond_view=torch.randn(b * v, 4, h, h, generator=gen),
        cond_motion=torch.randn(b * t, 4, h, h, generator=gen),
        num_video_frames=t * v,
        image_only_indicator=torch.zeros(b, t * v),
    )


NETWORKS = {
    "UNetModel (SD / SDXL)": (_sdxl, _sdxl_inputs),
    "VideoUNet (SVD / SV3D)": (_svd, _svd_inputs),
    "SpatialUNetModelWithTime (SV4D)": (_sv4d, _sv4d_inputs),
}
# blocks whose forward holds the bulk of the activations: each must be recomputed
BLOCKS = {
    "UNetModel (SD / SDXL)": {"ResBlock", "BasicTransformerBlock"},
    "VideoUNet (SVD / SV3D)": {
        "ResBlock",  # VideoResBlock: its spatial part and its time_stack
        "BasicTransformerBlock",
        "VideoTransformerBlock",
    },
    "SpatialUNetModelWithTime (SV4D)": {
        "ResBlock",  # PostHocResBlockWithTime: its spatial part and time_mix_blocks
        "BasicTransformerBlock",
        "BasicTransformerTimeMixBlock",
    },
}
TEMPORAL = ("time_stack", "time_mix_blocks", "motion", "view")


def _randomize(model):
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


def _grads(model, inputs):
    model.zero_grad()
    model(**inputs).square().mean().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def _checkpointing(model):
    """Modules whose forward runs through ``checkpoint`` (given the UNet's flag)."""
    return {
        n: m
        for n, m in model.named_modules()
        if "checkpoint(" in inspect.getsource(type(m).forward)
    }


@pytest.mark.parametrize("name", list(NETWORKS))
def test_checkpointed_unet_gives_the_unchecked_gradients(name):
    build, make_inputs = NETWORKS[name]
    plain, checked = build(False), build(True)
    _randomize(plain)
    checked.load_state_dict(plain.state_dict())
    inputs = make_inputs(torch.Generator().manual_seed(0))
    expected, got = _grads(plain, inputs), _grads(checked, inputs)
    assert all(g.abs().sum() > 0 for g in expected.values())
    for key, grad in expected.items():
        torch.testing.assert_close(got[key], grad, atol=1e-5, rtol=1e-4, msg=key)


def _recomputed(model, inputs) -> set[str]:
    """Names of the modules that ran during backward (a recompute calls the children of
    a checkpointed block)."""
    rerun: set[str] = set()
    in_backward = [False]
    for key, module in model.named_modules():
        module.register_forward_hook(
            lambda m, i, o, key=key: rerun.add(key) if in_backward[0] else None
        )
    loss = model(**inputs).square().mean()
    in_backward[0] = True
    loss.backward()
    return rerun


@pytest.mark.parametrize("name", list(NETWORKS))
def test_every_spatial_and_temporal_block_is_recomputed_in_backward(name):
    build, make_inputs = NETWORKS[name]
    model = build(True)
    rerun = _recomputed(model, make_inputs(torch.Generator().manual_seed(0)))
    blocks = _checkpointing(model)
    assert BLOCKS[name] <= {type(m).__name__ for m in blocks.values()}
    if name != "UNetModel (SD / SDXL)":  # the temporal blocks too
        assert any(part in k for k in blocks for part in TEMPORAL)
    not_recomputed = [k for k in blocks if not any(r.startswith(k + ".") for r in rerun)]
    assert not_recomputed == []
    assert _recomputed(build(False), make_inputs(torch.Generator().manual_seed(0))) == set()
