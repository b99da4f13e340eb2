"""UNet blocks: 3-D residual blocks, resampling, legacy attention, checkpointing, dispatch."""

import warnings

import pytest
import torch
import torch.nn.functional as F

from sgm.modules.diffusionmodules.openaimodel import (
    AttentionBlock,
    Downsample,
    ResBlock,
    TimestepBlock,
    TimestepEmbedSequential,
    UNetModel,
    Upsample,
)


def test_temporal_resblock_matches_diffusers_temporal_resnet_block():
    import torchvision  # noqa: F401  (before diffusers)
    from diffusers.models.resnet import TemporalResnetBlock

    ours = ResBlock(
        32,
        16,
        0.0,
        out_channels=64,
        dims=3,
        kernel_size=[3, 1, 1],
        exchange_temb_dims=True,
    ).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0, 0.1)
    theirs = TemporalResnetBlock(32, 64, temb_channels=16, eps=1e-5).eval()
    names = {
        "in_layers.0": "norm1",
        "in_layers.2": "conv1",
        "emb_layers.1": "time_emb_proj",
        "out_layers.0": "norm2",
        "out_layers.3": "conv2",
        "skip_connection": "conv_shortcut",
    }
    state = {}
    for key, value in ours.state_dict().items():
        prefix, leaf = key.rsplit(".", 1)
        state[f"{names[prefix]}.{leaf}"] = value
    theirs.load_state_dict(state, strict=True)
    x, emb = torch.randn(2, 32, 3, 4, 4), torch.randn(2, 3, 16)  # emb is (b, t, c)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, emb), theirs(x, emb), atol=1e-5, rtol=1e-5)


def test_resampling_3d_closed_form():
    x = torch.randn(1, 4, 2, 3, 3)
    up = Upsample(4, False, dims=3)(x)
    assert torch.equal(up, x.repeat_interleave(2, -1).repeat_interleave(2, -2))
    up_t = Upsample(4, False, dims=3, third_up=True)(x)
    assert up_t.shape == (1, 4, 4, 6, 6)
    assert torch.equal(up_t[:, :, ::2], up)
    down = Downsample(4, False, dims=3)(torch.randn(1, 4, 2, 4, 4))
    assert down.shape == (1, 4, 2, 2, 2)
    x = torch.randn(1, 4, 4, 4, 4)
    torch.testing.assert_close(Downsample(4, False, dims=3, third_down=True)(x), F.avg_pool3d(x, 2))
    conv_down = Downsample(4, True, dims=3, out_channels=8)
    assert conv_down.op.stride == (1, 2, 2) and conv_down.op.out_channels == 8


@pytest.mark.parametrize("new_order", [False, True])
def test_attention_block_closed_form(new_order):
    block = AttentionBlock(32, num_head_channels=8, use_new_attention_order=new_order)
    with torch.no_grad():
        block.proj_out.weight.normal_(0, 0.1)
        x = torch.randn(2, 32, 3, 3)
        qkv = block.qkv(block.norm(x.flatten(2)))  # (b, 3*c, L)
        if new_order:  # [q | k | v], each split into heads
            q, k, v = (t.reshape(2, 4, 8, 9) for t in qkv.chunk(3, 1))
        else:  # per head [q, k, v]
            q, k, v = qkv.reshape(2, 4, 24, 9).split(8, dim=2)
        w = torch.einsum("bhci,bhcj->bhij", q, k).div(8**0.5).softmax(-1)
        h = torch.einsum("bhij,bhcj->bhci", w, v).reshape(2, 32, 9)
        ref = (x.flatten(2) + block.proj_out(h)).reshape(x.shape)
        torch.testing.assert_close(block(x), ref, atol=1e-5, rtol=1e-5)


TINY = dict(
    in_channels=4,
    out_channels=4,
    model_channels=32,
    attention_resolutions=[2],
    num_res_blocks=1,
    channel_mult=[1, 2],
    num_head_channels=16,
    use_linear_in_transformer=True,
    transformer_depth=1,
    context_dim=16,
    num_classes="sequential",
    adm_in_channels=8,
    dropout=0.0,
)


def _grads(model, x, t, context, y):
    model.zero_grad()
    x = x.clone().requires_grad_()
    model(x, t, context, y).square().mean().backward()
    return [x.grad] + [p.grad.clone() for p in model.parameters()]


def test_checkpointing_gives_the_same_gradients_and_no_warnings_without_grad():
    plain = UNetModel(**TINY)
    with torch.no_grad():
        for p in plain.parameters():
            p.normal_(0, 0.1)
    ckpt = UNetModel(**TINY, use_checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    inputs = (
        torch.randn(2, 4, 8, 8),
        torch.tensor([5.0, 50.0]),
        torch.randn(2, 3, 16),
        torch.randn(2, 8),
    )
    for a, b in zip(_grads(plain, *inputs), _grads(ckpt, *inputs)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            ckpt(*inputs)


def test_sequence_dispatch_hook_and_input_errors():
    class Extra(torch.nn.Module):
        def forward_with_context(self, x, emb, context=None, **kwargs):
            return x + kwargs["num_video_frames"]

    class Emb(TimestepBlock):
        def forward(self, x, emb):
            return x * emb

    seq = TimestepEmbedSequential(Emb(), torch.nn.Identity(), Extra())
    out = seq(torch.ones(2), torch.full((2,), 3.0), None, num_video_frames=1)
    assert torch.equal(out, torch.full((2,), 4.0))
    net = UNetModel(**TINY)
    with pytest.raises(ValueError, match="num_classes"):
        net(torch.randn(1, 4, 8, 8), torch.ones(1), torch.randn(1, 2, 16))
    with pytest.raises(ValueError, match="num_head_channels"):
        UNetModel(**dict(TINY, num_head_channels=-1))
    with pytest.raises(ValueError, match="transformer_depth"):
        UNetModel(**dict(TINY, transformer_depth=[1, 1, 1]))
