"""SV4D 2.0 multi-view blocks: the 4-view (``use_3d_attention``) and 8-view layouts.

Oracles:
- the original implementation's output of a tiny SV4D 2.0 4-view network
  (``tests/fixtures/sv4d2_3d_attention``, a copy of the project's shared fixture), with and
  without image-only frames;
- a reference forward written here with einops from the description of the
  original's token regrouping, built from the block's own sub-blocks, at sizes the
  fixture does not cover (several clips, odd token counts, more views and frames);
- structural properties: blend weights that keep only the spatial path make the two
  layouts agree, the image-only indicator never changes the output, clips stay
  independent, and the 4-view regrouping only mixes neighbouring (view, pixel) rows.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from sgm.modules.spacetime_attention import (
    PostHocSpatialTransformerWithTimeMixingAndMotion,
)

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "sv4d2_3d_attention"
C, HEADS, CTX, ADM, COND = 32, 2, 24, 20, 4


# --------------------------------------------------------------------------- fixture


def _fixture_net():
    from omegaconf import OmegaConf
    from safetensors.torch import load_file

    from sgm.util import instantiate_from_config

    net = instantiate_from_config(OmegaConf.load(FIXTURE / "model.yaml").model)
    net.load_state_dict(load_file(FIXTURE / "weights.safetensors"), strict=True)
    return net.eval()


@pytest.mark.parametrize("io_file", ["io.safetensors", "io_image_only.safetensors"])
def test_fixture_matches_the_original(io_file):
    from safetensors.torch import load_file

    net = _fixture_net()
    io = load_file(FIXTURE / io_file)
    if io_file == "io_image_only.safetensors":
        assert bool((io["in.image_only_indicator"] == 1).all())
    with torch.no_grad():
        out = net(
            io["in.x"],
            timesteps=io["in.timesteps"],
            context=io["in.context"],
            y=io["in.y"],
            cond_view=io["in.cond_view"],
            cond_motion=io["in.cond_motion"],
            num_video_frames=6,
            image_only_indicator=io["in.image_only_indicator"],
        )
    expected = io["out.out"]
    error = (out - expected).abs().max().item()
    assert error <= 1e-6 + 1e-4 * expected.abs().max().item(), error


# --------------------------------------------------------------------------- blocks


def _block(
    use_3d,
    merge_strategy="learned_with_images",
    view_alpha=0.3,
    motion_alpha=-0.4,
    use_camera_emb=True,
    seed=0,
):
    block = PostHocSpatialTransformerWithTimeMixingAndMotion(
        C,
        HEADS,
        C // HEADS,
        context_dim=CTX,
        use_linear=True,
        use_spatial_context=True,
        use_camera_emb=use_camera_emb,
        adm_in_channels=ADM if use_camera_emb else None,
        use_3d_attention=use_3d,
        separate_motion_merge_factor=True,
        time_mix_legacy=False,
        merge_strategy=merge_strategy,
        merge_factor=view_alpha,
        merge_factor_motion=motion_alpha,
        ff_in=True,
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in block.named_parameters():
            if not name.endswith("mix_factor"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return block.eval()


def _inputs(b, t, v, h, w, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return dict(
        x=torch.randn(b * t * v, C, h, w, generator=gen),
        context=torch.randn(b, t, CTX, generator=gen),
        cond_view=torch.randn(b * v, COND, 2 * h, 2 * w, generator=gen),
        cam=torch.randn(b * t * v, ADM, generator=gen),
    )


def _run(block, inputs, image_only_indicator=None):
    b, t = inputs["context"].shape[:2]
    v = inputs["cond_view"].shape[0] // b
    with torch.no_grad():
        return block(
            inputs["x"],
            inputs["context"],
            cam=inputs["cam"],
            timesteps=t * v,
            cond_view=inputs["cond_view"],
            image_only_indicator=image_only_indicator,
        )


def _alpha(mixer) -> torch.Tensor:
    # Blend weight of the spatial path for video frames (indicator 0).
    if mixer.merge_strategy == "fixed":
        return mixer.mix_factor
    return torch.sigmoid(mixer.mix_factor)


def _sinusoid(n: int, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    freqs = torch.exp(-math.log(max_period) * torch.arange(dim // 2) / (dim // 2))
    args = torch.arange(n, dtype=torch.float32)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def _reference(block, inputs):
    """The block's forward, written out from the description of the original layout."""
    x_in, context, cond_view, cam = (inputs[k] for k in ("x", "context", "cond_view", "cam"))
    b, t = context.shape[:2]
    v = cond_view.shape[0] // b
    h, w = x_in.shape[-2:]
    hw = h * w
    x = block.proj_in(rearrange(block.norm(x_in), "n c h w -> n (h w) c"))
    spatial_ctx = repeat(context, "b t d -> (b t v) 1 d", v=v)
    view_ctx = repeat(context, "b t d -> (b t hw) 1 d", hw=hw)
    motion_ctx = rearrange(
        F.interpolate(cond_view, size=(h, w), mode="bilinear"), "(b v) d h w -> (b v h w) 1 d", b=b
    )
    emb_time = block.time_mix_motion_embed(_sinusoid(t, C))  # (t, c)
    if block.use_camera_emb:
        first = rearrange(cam, "(b t v) d -> b t v d", b=b, t=t)[:, 0]
        emb_view = block.time_mix_time_embed(first)  # (b, v, c)
    else:
        emb_view = repeat(block.time_mix_time_embed(_sinusoid(v, C)), "v c -> b v c", b=b)
    a_view, a_motion = _alpha(block.time_mixer), _alpha(block.time_mixer_motion)
    blocks = zip(block.transformer_blocks, block.time_mix_blocks, block.motion_blocks)
    for spatial, view_block, motion_block in blocks:
        x = spatial(x, context=spatial_ctx)
        if block.use_3d_attention:
            # one row per (clip, view, pixel), running over the t frames
            xs = rearrange(x, "(b t v) s c -> (b v s) t c", b=b, t=t)
            emb = repeat(emb_view, "b v c -> (b v s) 1 c", s=hw)
            back = "(b v s) t c -> (b t) (v s) c"
        else:
            # one row per (clip, view), running over t frames of hw pixels
            xs = rearrange(x, "(b t v) s c -> (b v) (t s) c", b=b, t=t)
            emb = rearrange(emb_view, "b v c -> (b v) 1 c")
            back = "(b v) (t s) c -> (b t) (v s) c"
        mixed = view_block(xs + emb, context=view_ctx, timesteps=v)
        xs = a_view * xs + (1 - a_view) * mixed
        xm = rearrange(xs, back, b=b, v=v, t=t, s=hw)
        mixed = motion_block(
            xm + repeat(emb_time, "t c -> (b t) 1 c", b=b), context=motion_ctx, timesteps=t
        )
        xm = a_motion * xm + (1 - a_motion) * mixed
        x = rearrange(xm, "(b t) (v s) c -> (b t v) s c", b=b, t=t, v=v)
    x = rearrange(block.proj_out(x), "n (h w) c -> n c h w", h=h)
    return x + x_in


SIZES = [  # b, t, v, h, w
    (1, 3, 2, 4, 4),
    (2, 2, 4, 3, 3),  # hw = 9: runs of v rows straddle two views
    (1, 5, 3, 2, 4),
    (2, 4, 2, 2, 3),
]


@pytest.mark.parametrize("use_3d", [True, False])
@pytest.mark.parametrize("size", SIZES)
def test_block_matches_the_einops_reference(use_3d, size):
    block = _block(use_3d, use_camera_emb=size[0] == 1)
    inputs = _inputs(*size)
    with torch.no_grad():
        expected = _reference(block, inputs)
    got = _run(block, inputs, torch.zeros(size[0], size[1] * size[2]))
    scale = expected.abs().max()
    torch.testing.assert_close(got, expected, atol=1e-5 * scale, rtol=0)


@pytest.mark.parametrize("size", SIZES[:2])
def test_spatial_only_view_blend_makes_the_layouts_agree(size):
    # Fixed view alpha 1 drops the view mixer's output: only the regrouping differs
    # between the layouts, and the motion path is laid out the same in both.
    three_d = _block(True, merge_strategy="fixed", view_alpha=1.0, motion_alpha=0.4)
    eight = _block(False, merge_strategy="fixed", view_alpha=1.0, motion_alpha=0.4)
    eight.load_state_dict(three_d.state_dict())
    inputs = _inputs(*size)
    torch.testing.assert_close(_run(three_d, inputs), _run(eight, inputs), atol=1e-5, rtol=0)
    mixing = _block(True, merge_strategy="fixed", view_alpha=0.5, motion_alpha=0.4)
    mixing_eight = _block(False, merge_strategy="fixed", view_alpha=0.5, motion_alpha=0.4)
    mixing_eight.load_state_dict(mixing.state_dict())
    assert not torch.allclose(_run(mixing, inputs), _run(mixing_eight, inputs), atol=1e-3)


@pytest.mark.parametrize("use_3d", [True, False])
def test_image_only_indicator_is_ignored(use_3d):
    b, t, v = 2, 3, 2
    block = _block(use_3d)
    inputs = _inputs(b, t, v, 3, 4)
    base = _run(block, inputs, torch.zeros(b, t * v))
    mixed = torch.tensor([[1.0, 0, 1, 1, 0, 0], [0, 1, 0, 0, 1, 1]])
    for indicator in (torch.ones(b, t * v), mixed, None):
        torch.testing.assert_close(_run(block, inputs, indicator), base, atol=0, rtol=0)


@pytest.mark.parametrize("use_3d", [True, False])
def test_clips_are_independent(use_3d):
    b, t, v, h, w = 2, 3, 2, 3, 3
    block = _block(use_3d)
    inputs = _inputs(b, t, v, h, w)
    other = _inputs(b, t, v, h, w, seed=7)
    mixed = {}
    for key, value in inputs.items():  # clip 0 from `inputs`, clip 1 from `other`
        half = value.shape[0] // 2
        mixed[key] = torch.cat([value[:half], other[key][half:]])
    out, out_mixed = _run(block, inputs), _run(block, mixed)
    n = t * v
    torch.testing.assert_close(out_mixed[:n], out[:n], atol=1e-6, rtol=0)
    assert not torch.allclose(out_mixed[n:], out[n:], atol=1e-3)


def _changed(block, size, t0, v0):
    b, t, v, h, w = size
    inputs = _inputs(*size)
    base = _run(block, inputs)
    x = inputs["x"].reshape(b, t, v, C, h, w).clone()
    x[0, t0, v0] += 1.0
    moved = _run(block, {**inputs, "x": x.reshape_as(inputs["x"])})
    diff = (moved - base).reshape(b, t, v, -1).abs().amax(dim=(0, 3))
    return diff > 1e-6  # (t, v)


def test_3d_view_mixing_reaches_other_views_only_across_view_boundaries():
    # Without motion mixing (motion alpha 1), a change to one (frame, view) image
    # spreads within its frame only. In the 4-view layout the view mixer attends
    # across runs of v consecutive (view, pixel) rows: with h*w a multiple of v the
    # runs stay inside one view, otherwise they straddle neighbouring views.
    def block():
        return _block(True, merge_strategy="fixed", view_alpha=0.3, motion_alpha=1.0)

    t, v = 3, 2
    inside = _changed(block(), (1, t, v, 4, 4), t0=1, v0=0)
    expected = torch.zeros(t, v, dtype=torch.bool)
    expected[1, 0] = True
    assert torch.equal(inside, expected)
    straddling = _changed(block(), (1, t, v, 3, 3), t0=1, v0=0)
    expected[1, 1] = True
    assert torch.equal(straddling, expected)
    eight = _block(False, merge_strategy="fixed", view_alpha=0.3, motion_alpha=1.0)
    assert torch.equal(_changed(eight, (1, t, v, 4, 4), t0=1, v0=0), expected)


def test_3d_layout_is_equivariant_to_view_permutation():
    # With h*w a multiple of v, runs of v rows stay inside one view; with the same
    # context for every frame and cameras moving with their views, permuting the
    # views permutes the output.
    b, t, v, h, w = 1, 3, 4, 2, 2
    block = _block(True)
    inputs = _inputs(b, t, v, h, w)
    inputs["context"] = inputs["context"][:, :1].expand(b, t, CTX).contiguous()
    perm = torch.tensor([2, 0, 3, 1])

    def permuted(tensor, frames):
        shape = (b, t, v) if frames else (b, v)
        grouped = tensor.reshape(*shape, *tensor.shape[1:])
        return (grouped[:, :, perm] if frames else grouped[:, perm]).reshape_as(tensor)

    moved = {
        "x": permuted(inputs["x"], True),
        "cam": permuted(inputs["cam"], True),
        "cond_view": permuted(inputs["cond_view"], False),
        "context": inputs["context"],
    }
    out = _run(block, inputs)
    torch.testing.assert_close(_run(block, moved), permuted(out, True), atol=1e-5, rtol=0)
