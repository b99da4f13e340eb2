"""SV4D multi-view/motion block and the video blocks' limiting cases.

Oracles: locality and permutation structure (view attention mixes views of one
frame only, motion attention frames of one view only), and the spatial-only
limit (blend weight 1) equal to the plain image blocks with the same weights.
"""

from __future__ import annotations

import pytest
import torch

from sgm.modules.attention import SpatialTransformer
from sgm.modules.diffusionmodules._unet_blocks import ResBlock
from sgm.modules.diffusionmodules.video_model import VideoResBlock
from sgm.modules.spacetime_attention import (
    PostHocSpatialTransformerWithTimeMixingAndMotion,
)
from sgm.modules.video_attention import SpatialVideoTransformer

B, T, V, C, H, W, CTX = 1, 3, 2, 32, 4, 4, 24


def _randomize(module: torch.nn.Module, keep=("mix_factor",)) -> None:
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if not name.endswith(keep):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def _motion_block(view_alpha, motion_alpha, **kw):
    block = PostHocSpatialTransformerWithTimeMixingAndMotion(
        C,
        2,
        16,
        context_dim=CTX,
        use_linear=True,
        use_spatial_context=True,
        merge_strategy="fixed",
        merge_factor=view_alpha,
        merge_factor_motion=motion_alpha,
        separate_motion_merge_factor=True,
        time_mix_legacy=False,
        ff_in=True,
        **kw,
    )
    _randomize(block)
    return block.eval()


def _inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B * T * V, C, H, W, generator=gen)
    context = torch.randn(B, T, CTX, generator=gen)
    cond_view = torch.randn(B * V, 4, 2 * H, 2 * W, generator=gen)
    return x, context, cond_view


def _run(block, x, context, cond_view, cam=None):
    with torch.no_grad():
        out = block(
            x,
            context,
            cam=cam,
            timesteps=T * V,
            cond_view=cond_view,
            image_only_indicator=torch.zeros(B, T * V),
        )
    return out.reshape(B, T, V, C, H, W)


def _changed(block, t0, v0):
    x, context, cond_view = _inputs()
    base = _run(block, x, context, cond_view)
    x2 = x.reshape(B, T, V, C, H, W).clone()
    x2[:, t0, v0] += 1.0
    moved = _run(block, x2.reshape_as(x), context, cond_view)
    return (moved - base).abs().amax(dim=(0, 3, 4, 5)) > 1e-6  # (T, V)


@pytest.mark.parametrize("use_3d_attention", [False, True])
def test_view_attention_stays_within_a_frame(use_3d_attention):
    block = _motion_block(0.0, 1.0, use_3d_attention=use_3d_attention)
    changed = _changed(block, t0=1, v0=0)
    expected = torch.zeros(T, V, dtype=torch.bool)
    # 8-view: every view of the frame. 4-view (3-D) layout: runs of V consecutive
    # (view, pixel) rows, all inside view 0 here since H*W is a multiple of V.
    expected[1, :] = True if not use_3d_attention else torch.tensor([True, False])
    assert torch.equal(changed, expected)


def test_motion_attention_stays_within_a_view():
    block = _motion_block(1.0, 0.0)
    changed = _changed(block, t0=1, v0=1)
    expected = torch.zeros(T, V, dtype=torch.bool)
    expected[:, 1] = True
    assert torch.equal(changed, expected)


@pytest.mark.parametrize("use_3d_attention", [False, True])
def test_view_path_is_equivariant_to_frame_permutation(use_3d_attention):
    block = _motion_block(0.0, 1.0, use_3d_attention=use_3d_attention)
    x, context, cond_view = _inputs(1)
    perm = torch.tensor([2, 0, 1])
    if use_3d_attention:
        # The 3-D layout pairs view-mixer rows with context rows of other frames
        # (as the original does), so only a context shared by all frames commutes.
        context = context[:, :1].expand(B, T, CTX)
    out = _run(block, x, context, cond_view)
    x_p = x.reshape(B, T, V, C, H, W)[:, perm].reshape_as(x)
    out_p = _run(block, x_p, context[:, perm], cond_view)
    torch.testing.assert_close(out_p, out[:, perm], atol=1e-5, rtol=1e-5)


def test_motion_path_is_equivariant_to_view_permutation():
    block = _motion_block(1.0, 0.0)
    x, context, cond_view = _inputs(2)
    perm = torch.tensor([1, 0])
    out = _run(block, x, context, cond_view)
    x_p = x.reshape(B, T, V, C, H, W)[:, :, perm].reshape_as(x)
    cond_p = cond_view.reshape(B, V, 4, 2 * H, 2 * W)[:, perm].reshape_as(cond_view)
    out_p = _run(block, x_p, context, cond_p)
    torch.testing.assert_close(out_p, out[:, :, perm], atol=1e-5, rtol=1e-5)


def _spatial_twin(block) -> SpatialTransformer:
    twin = SpatialTransformer(C, 2, 16, context_dim=CTX, use_linear=True, use_checkpoint=False)
    missing = twin.load_state_dict(block.state_dict(), strict=False).missing_keys
    assert missing == []
    return twin.eval()


@pytest.mark.parametrize("use_3d_attention", [False, True])
def test_alpha_one_is_the_spatial_path(use_3d_attention):
    block = _motion_block(1.0, 1.0, use_3d_attention=use_3d_attention)
    x, context, cond_view = _inputs(3)
    per_frame_context = context.repeat_interleave(V, dim=1).reshape(B * T * V, 1, CTX)
    with torch.no_grad():
        expected = _spatial_twin(block)(x, per_frame_context)
    got = _run(block, x, context, cond_view).reshape_as(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_camera_embedding_taken_from_first_frame():
    block = _motion_block(0.0, 1.0, use_camera_emb=True, adm_in_channels=20)
    x, context, cond_view = _inputs(4)
    cam = torch.randn(B * T * V, 20)
    cam_later = cam.reshape(B, T, V, 20).clone()
    cam_later[:, 1:] = torch.randn(B, T - 1, V, 20)
    torch.testing.assert_close(
        _run(block, x, context, cond_view, cam),
        _run(block, x, context, cond_view, cam_later.reshape_as(cam)),
    )
    cam_first = cam.reshape(B, T, V, 20).clone()
    cam_first[:, 0] += 1.0
    assert not torch.allclose(
        _run(block, x, context, cond_view, cam),
        _run(block, x, context, cond_view, cam_first.reshape_as(cam)),
    )


def test_images_only_gives_the_spatial_path_in_svd_blocks():
    frames = 3
    video_tf = SpatialVideoTransformer(
        C,
        2,
        16,
        context_dim=CTX,
        use_linear=True,
        use_spatial_context=True,
        ff_in=True,
        merge_strategy="learned_with_images",
        merge_factor=0.3,
    ).eval()
    _randomize(video_tf)
    x = torch.randn(2 * frames, C, H, W)
    context = torch.randn(2 * frames, 1, CTX)
    images = torch.ones(2, frames)
    with torch.no_grad():
        got = video_tf(x, context, timesteps=frames, image_only_indicator=images)
        expected = _spatial_twin(video_tf)(x, context)
        mixed = video_tf(x, context, timesteps=frames, image_only_indicator=0 * images)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(mixed, expected, atol=1e-3)

    res = VideoResBlock(
        C,
        16,
        0.0,
        video_kernel_size=[3, 1, 1],
        out_channels=2 * C,
        merge_strategy="learned_with_images",
    ).eval()
    _randomize(res)
    plain = ResBlock(C, 16, 0.0, out_channels=2 * C).eval()
    plain.load_state_dict(res.state_dict(), strict=False)
    emb = torch.randn(2 * frames, 16)
    with torch.no_grad():
        torch.testing.assert_close(res(x, emb, frames, images), plain(x, emb))
