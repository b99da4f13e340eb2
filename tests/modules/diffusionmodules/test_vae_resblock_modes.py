"""The VAE ResnetBlock overwrites its normalised activations only when autograd is off:
with and without autograd it computes the same numbers, and training still backpropagates."""

from __future__ import annotations

import torch

from sgm.modules.diffusionmodules.model import ResnetBlock


def test_same_output_with_and_without_autograd_and_gradients_flow():
    torch.manual_seed(0)
    block = ResnetBlock(in_channels=64, out_channels=32, dropout=0.0, temb_channels=0)
    x = torch.randn(2, 64, 8, 8, requires_grad=True)
    with torch.no_grad():
        inference = block(x)
    with torch.inference_mode():
        inference_mode = block(x.detach())
    training = block(x)
    assert torch.equal(inference, training.detach())
    assert torch.equal(inference_mode, inference)
    training.square().mean().backward()
    assert x.grad is not None and block.conv1.weight.grad.abs().sum() > 0
    # the functional oracle, step by step in float32
    f = torch.nn.functional
    with torch.no_grad():
        h = block.conv1(f.silu(block.norm1(x)))
        h = block.conv2(f.silu(block.norm2(h)))
        expected = block.nin_shortcut(x) + h
    torch.testing.assert_close(inference, expected, rtol=0, atol=0)
