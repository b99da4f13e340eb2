"""Tiny video UNets: SV3D camera conditioning, SV4D variants, gradients, checkpointing."""

from __future__ import annotations

import math

import pytest
import torch

from sgm.modules.diffusionmodules.util import timestep_embedding
from sgm.modules.diffusionmodules.video_model import SpatialUNetModelWithTime, VideoUNet
from sgm.modules.encoders.modules import ConcatTimestepEmbedderND

TINY = dict(
    in_channels=8,
    out_channels=4,
    model_channels=32,
    num_res_blocks=1,
    attention_resolutions=[1, 2],
    channel_mult=[1, 2],
    num_head_channels=16,
    use_linear_in_transformer=True,
    transformer_depth=1,
    context_dim=24,
    num_classes="sequential",
    extra_ff_mix_layer=True,
    use_spatial_context=True,
)


def _randomize(model: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


def _video_unet(**kw) -> VideoUNet:
    return VideoUNet(
        **TINY,
        adm_in_channels=40,
        merge_strategy="learned_with_images",
        video_kernel_size=[3, 1, 1],
        **kw,
    )


def _sv3d_vector(cond_aug, polars, azimuths):
    """SV3D ``vector``: cond_aug (8), polar (16) and azimuth (16) embeddings per frame."""
    parts = [
        ConcatTimestepEmbedderND(8)(cond_aug),
        ConcatTimestepEmbedderND(16)(polars),
        ConcatTimestepEmbedderND(16)(azimuths),
    ]
    return torch.cat(parts, dim=1)


def test_sv3d_camera_conditioning_path():
    frames = 4
    model = _video_unet().eval()
    _randomize(model)
    azimuths = torch.linspace(0, 2 * math.pi, frames + 1)[1:]
    polars = torch.full((frames,), 0.3)
    y = _sv3d_vector(torch.full((frames,), 0.02), polars, azimuths)
    assert y.shape == (frames, 40)
    # closed form of the sinusoidal embedding: [cos(a * f_i), sin(a * f_i)], f_i = 1e4^(-i/8)
    freqs = torch.exp(-math.log(10000) * torch.arange(8) / 8)
    expected = torch.cat(
        [torch.cos(azimuths[:, None] * freqs), torch.sin(azimuths[:, None] * freqs)], 1
    )
    torch.testing.assert_close(y[:, 24:], expected)
    x = torch.randn(frames, 8, 8, 8)
    t = torch.full((frames,), 0.7)
    with torch.no_grad():
        emb = model._embedding(x, t, y)
        manual = model.time_embed(timestep_embedding(t, 32)) + model.label_emb(y)
        out = model(
            x,
            t,
            context=torch.randn(frames, 1, 24),
            y=y,
            num_video_frames=frames,
            image_only_indicator=torch.zeros(1, frames),
        )
    torch.testing.assert_close(emb, manual)
    assert out.shape == (frames, 4, 8, 8)
    assert torch.isfinite(out).all()


SV4D_VARIANTS = {
    "sv4d": {},
    "sv4d2": dict(separate_motion_merge_factor=True, use_3d_attention=True, use_camera_emb=True),
    "sv4d2_8views": dict(separate_motion_merge_factor=True, use_camera_emb=True),
}


def _sv4d(**kw) -> SpatialUNetModelWithTime:
    tiny = {k: v for k, v in TINY.items() if k != "num_classes"}
    return SpatialUNetModelWithTime(
        **tiny,
        num_classes="sequential",
        adm_in_channels=128,
        legacy=False,
        use_spatial_transformer=True,
        use_motion_attention=True,
        motion_context_dim=4,
        time_block_merge_strategy="learned_with_images",
        time_block_merge_factor=0.0,
        time_kernel_size=[3, 1, 1],
        time_mix_legacy=False,
        replicate_time_mix_bug=True,
        **kw,
    )


def _sv4d_inputs(b=1, t=2, v=2, h=8):
    n = b * t * v
    return dict(
        x=torch.randn(n, 8, h, h),
        timesteps=torch.full((n,), 0.5),
        context=torch.randn(b, t, 24),
        y=torch.randn(n, 128),
        cond_view=torch.randn(b * v, 4, h, h),
        cond_motion=torch.randn(b * t, 4, h, h),
        num_video_frames=t * v,
        image_only_indicator=torch.zeros(b, t * v),
    )


@pytest.mark.parametrize("variant", sorted(SV4D_VARIANTS))
def test_sv4d_variants_forward_and_backward(variant):
    model = _sv4d(**SV4D_VARIANTS[variant])
    _randomize(model)
    out = model(**_sv4d_inputs())
    assert out.shape == (4, 4, 8, 8)
    out.square().mean().backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert silent == []


def _train(model, steps=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    frames = 3
    x = torch.randn(2 * frames, 8, 8, 8, generator=gen)
    target = torch.randn(2 * frames, 4, 8, 8, generator=gen)
    batch = dict(
        timesteps=torch.rand(2 * frames, generator=gen),
        context=torch.randn(2 * frames, 1, 24, generator=gen),
        y=torch.randn(2 * frames, 40, generator=gen),
        num_video_frames=frames,
        image_only_indicator=torch.zeros(2, frames),
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses, grads = [], None
    for _ in range(steps):
        opt.zero_grad()
        loss = (model(x, **batch) - target).square().mean()
        loss.backward()
        if grads is None:
            grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        opt.step()
        losses.append(loss.item())
    return losses, grads


def test_gradients_reach_every_block_and_training_reduces_loss():
    model = _video_unet()
    _randomize(model)
    losses, grads = _train(model)
    silent = [n for n, g in grads.items() if not g.any()]
    assert silent == []
    assert losses[-1] < losses[0]


def test_gradient_checkpointing_gives_the_same_gradients():
    plain, ckpt = _video_unet(), _video_unet(use_checkpoint=True)
    _randomize(plain)
    ckpt.load_state_dict(plain.state_dict())
    _, g_plain = _train(plain, steps=1)
    _, g_ckpt = _train(ckpt, steps=1)
    for name, g in g_plain.items():
        torch.testing.assert_close(g_ckpt[name], g, atol=1e-5, rtol=1e-4, msg=name)
